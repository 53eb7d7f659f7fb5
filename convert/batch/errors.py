"""Batch errors: a plan that cannot be built is refused before any job starts."""

from __future__ import annotations

from llorch.convert.errors import ConversionError


class BatchError(ConversionError):
    """Base class of the batch's own errors."""


class ManifestError(BatchError):
    """The manifest cannot be read, or an entry is invalid (the message names it)."""


class SourceResolveError(BatchError):
    """An `hf:` source is not in the local Hugging Face cache and cannot be downloaded."""


class OutDirLockedError(BatchError):
    """Another batch is writing into the same output folder."""
