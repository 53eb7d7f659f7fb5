"""Detection errors: one base class, one subclass per kind of problem."""

from __future__ import annotations


class DetectionError(Exception):
    """Base class: the source cannot be identified as a model llorch understands."""


class SourceNotFoundError(DetectionError):
    """The path does not exist and no cached Hugging Face repo has that id."""


class MissingFileError(DetectionError):
    """A file the format requires (config.json, weights, an index shard) is absent."""


class InvalidFileError(DetectionError):
    """A file exists but cannot be parsed (bad JSON, truncated data, wrong sizes)."""


class UnsupportedArchitectureError(DetectionError):
    """The architecture name is not in the SUPPORTED table."""
