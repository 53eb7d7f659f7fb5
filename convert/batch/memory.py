"""Memory bounds for parallel jobs: sizes as written on a command line, the machine's safe
share, and a job's peak estimated from its safetensors headers (no weights read)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from llorch.convert.batch.errors import BatchError

# Interpreter, numpy, tokenizers and llama.cpp's libraries, measured near 300 MiB; rounded up.
BASELINE = 512 << 20
# The converter holds one tensor as float32 plus its encoded copy; llama.cpp's quantizer holds
# the source tensor, a float32 copy and the output: four float32-sized buffers bound both.
TENSOR_COPIES = 4
SAFE_SHARE = 0.8  # of the memory available when the batch starts

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'16G', '512MiB', '2.5g', '1000000' -> bytes (binary units: 1G = 2**30)."""
    match = _SIZE.match(text)
    if match is None:
        raise BatchError(f"{text!r}: not a size; use e.g. 512M, 16G, 1.5T or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def available() -> int:
    """MemAvailable on Linux; elsewhere the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_max_ram() -> int:
    return int(available() * SAFE_SHARE)


def estimate_peak(largest_tensor_elements: int) -> int:
    return BASELINE + TENSOR_COPIES * 4 * largest_tensor_elements


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"
