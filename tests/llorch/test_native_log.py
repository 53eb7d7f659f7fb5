"""llama.cpp has one log callback per process: the converter and the worker share it, so each
still quotes llama.cpp's own words for a failure whichever of them set up llama.cpp first."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from llorch.convert import llamacpp
from llorch.convert.errors import ConversionError
from llorch.worker.backend import llama as worker_llama


def _not_a_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)  # header cut short
    return path


def test_converter_quotes_llama_cpp_after_the_worker_set_up(tmp_path: Path, caplog: Any) -> None:
    worker_llama.init_llama_cpp()  # the worker first, as in a process that serves and converts
    llamacpp._lib()
    caplog.set_level(logging.DEBUG, logger="llorch.llama_cpp")
    broken = _not_a_gguf(tmp_path)
    with (
        pytest.raises(ConversionError, match="could not load the written GGUF") as err,
        llamacpp.load_model(broken, vocab_only=True),
    ):
        pass
    detail = str(err.value).split("GGUF (", 1)[1].rstrip(")")
    assert detail, str(err.value)
    # the same line reached the worker's logger, at error level
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(detail in message for message in errors), (detail, errors)
