"""llama.cpp's own tools as test references, and text to feed them.

llama-imatrix, llama-quantize and llama-perplexity are built from the llama.cpp that
llama-cpp-python vendors, into the build folder bench/serving.py builds llama-server in
(`python bench/imatrix.py --build-tools` builds them); a test that needs one and finds it
missing says so and skips.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from tiny_hf import CORPUS

REPO = Path(__file__).resolve().parents[1]


def tool(name: str) -> Path:
    sys.path.insert(0, str(REPO / "bench"))
    from benchlib import load

    backend = load("llorch_build_backend", REPO / "build" / "backend.py")
    version = backend.LLAMA_CPP_PYTHON.split("==")[1]
    path = backend.cache_dir() / "llama-server" / version / "build" / "bin" / name
    if not path.exists():
        pytest.skip(f"{path} not built (python bench/imatrix.py --build-tools)")
    return Path(path)


def calibration_text(path: Path, lines: int = 200, seed: int = 0) -> Path:
    """Lines of twelve words drawn from tiny_hf's corpus (its tokenizer knows them)."""
    rng = random.Random(seed)
    words = " ".join(CORPUS).split()
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(lines)))
    return path
