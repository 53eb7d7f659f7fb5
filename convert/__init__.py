"""SafeTensors checkpoint to GGUF conversion: convert(), cached_gguf(), and their errors."""

from llorch.convert.api import ConversionReport, convert
from llorch.convert.cache import cached_gguf
from llorch.convert.errors import MODEL_ERRORS, ConversionError

__all__ = [
    "MODEL_ERRORS",
    "ConversionError",
    "ConversionReport",
    "cached_gguf",
    "convert",
]
