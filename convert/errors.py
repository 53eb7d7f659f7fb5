"""Conversion errors: one base class, one subclass per kind of problem.

Detection problems (missing config.json, unknown architecture, truncated safetensors) raise
llorch.detector.DetectionError subclasses; MODEL_ERRORS catches both families.
"""

from __future__ import annotations

from llorch.detector.errors import DetectionError


class ConversionError(Exception):
    """Base class: the checkpoint was identified but could not be converted."""


class ConversionCancelled(ConversionError):
    """The caller asked the conversion to stop; nothing was written."""


class MissingTokenizerError(ConversionError):
    """No usable tokenizer.model / tokenizer.json next to the weights."""


class TokenizerError(ConversionError):
    """The tokenizer files are present but cannot be represented in GGUF."""


class UnknownPreTokenizerError(TokenizerError):
    """The BPE pre-tokenizer does not match any llama.cpp pre-tokenizer."""


class UnmappedTensorError(ConversionError):
    """A checkpoint tensor has no GGUF name for this architecture."""


class MissingTensorError(ConversionError):
    """A tensor the architecture needs is not in the checkpoint."""


class MissingExpertError(MissingTensorError):
    """A mixture-of-experts layer lacks some experts' weights."""


class ShapeMismatchError(ConversionError):
    """A tensor's shape disagrees with config.json."""


class ConfigError(ConversionError):
    """config.json lacks a value the architecture needs, or has one we cannot honour."""


class OutputError(ConversionError):
    """The output file cannot be written (unwritable folder, disk full)."""


class OutputExistsError(OutputError):
    """The output file exists and overwriting was not asked for."""

    def __init__(self, path: object, how: str = "overwrite=True") -> None:
        super().__init__(f"{path}: already exists; not overwritten without {how}")
        self.path = path


class OutTypeError(ConversionError):
    """The requested --outtype is not a known type."""


class ImatrixRequiredError(OutTypeError):
    """The --outtype needs an importance matrix and none was given."""


class ImatrixError(ConversionError):
    """An importance matrix cannot be read, computed, or does not fit the model."""


class QualityError(ConversionError):
    """The evaluation text cannot be read, or is too short for the chunk size."""


class QuantizeError(ConversionError):
    """llama.cpp's quantizer failed."""


class VerificationError(ConversionError):
    """The written GGUF does not reproduce the source tokenizer."""


MODEL_ERRORS: tuple[type[Exception], ...] = (DetectionError, ConversionError)
