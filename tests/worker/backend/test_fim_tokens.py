"""ModelInfo.fim: the FIM tokens llama.cpp reports for the loaded model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fim_checkpoints import build
from support import THREADS

from llorch.convert import convert
from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import FimTokens, LoadOptions


def _converter_helpers() -> Any:
    name = "fim_tokens_convert_conftest"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "convert" / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def test_gemma_has_no_fim_tokens(backend: Any) -> None:
    fim = backend.info().fim
    assert (fim.pre, fim.suf, fim.mid, fim.rep, fim.sep) == (None,) * 5
    assert fim.bos == 2  # Gemma's vocabulary starts prompts with <bos>


@pytest.mark.slow
def test_a_coder_models_fim_tokens(tmp_path: Path) -> None:
    ids = build(tmp_path / "hf", "qwen2.5-coder", _converter_helpers())
    path = tmp_path / "coder.gguf"
    convert(tmp_path / "hf", path, outtype="f32")
    backend = LlamaCppBackend()
    try:
        fim = backend.load(path, LoadOptions(ctx_size=256, threads=THREADS)).fim
    finally:
        backend.close()
    assert fim == FimTokens(
        pre=ids["fim_pre"],
        suf=ids["fim_suf"],
        mid=ids["fim_mid"],
        pad=ids["fim_pad"],
        rep=ids["fim_rep"],
        sep=ids["fim_sep"],
        bos=None,  # Qwen adds no BOS
    )


@pytest.mark.e2e
def test_infill_on_gemma_is_a_400_naming_the_model(worker: Any) -> None:
    body = {"input_prefix": "def f(", "input_suffix": ")"}
    response = httpx.post(f"{worker.url}/infill", json=body, timeout=60)
    assert response.status_code == 400
    message = response.json()["errors"][0]["message"]
    assert "cannot fill in the middle" in message and "prefix, suffix, middle" in message
    model = httpx.get(f"{worker.url}/health").json()["model"]["name"]
    assert repr(model) in message
