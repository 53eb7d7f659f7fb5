"""A Llama 4 projector loads with a warning: llama.cpp's mtmd gives its image tokens column by
column where transformers gives them row by row (the rows themselves equal transformers':
tests/convert/test_llama4_projector.py), so a user is told before the answers show it."""

from __future__ import annotations

import logging

import pytest
import tiny_vlm
from support import THREADS

from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import LoadOptions

pytestmark = pytest.mark.slow


def test_a_llama4_projector_loads_with_a_warning(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    vlm = tiny_vlm.cached(tmp_path_factory.getbasetemp(), "llama4")
    backend = LlamaCppBackend()
    try:
        options = LoadOptions(ctx_size=256, parallel=1, threads=THREADS, mmproj=vlm.mmproj)
        with caplog.at_level(logging.WARNING, logger="llorch.mtmd"):
            info = backend.load(vlm.text, options)
        assert "vision" in info.media_inputs
    finally:
        backend.close()
    assert any("another order than the model was trained" in r.message for r in caplog.records)
