"""/health and /capacity say where the served GGUF came from, when its metadata says so."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support import THREADS, WorkerProcess, start_worker
from tiny_hf import hf_cache_repo, tiny_llama

from llorch.convert.batch import convert_batch, load_manifest
from llorch.worker.backend.provenance import model_source

COMMIT = "5eed" + "0" * 36


@pytest.mark.e2e
def test_a_batch_converted_model_reports_its_source_and_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_path: Path
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache" / "gguf"))
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    hf_cache_repo(hub, "acme/tiny", tiny_llama(tmp_path / "staging"), COMMIT)
    manifest = tmp_path / "batch.toml"
    manifest.write_text(
        'outtypes = ["q8_0"]\nquantized_by = "test suite"\n'
        '[[models]]\nsource = "hf:acme/tiny@main"\n'
    )
    report = convert_batch(load_manifest(manifest), tmp_path / "out")
    assert report.ok, report.failed
    converted = tmp_path / "out" / report.jobs[0].outputs[0]["file"]

    expected = {
        "url": "https://huggingface.co/acme/tiny",
        "repo_url": "https://huggingface.co/acme/tiny",
        "revision": COMMIT,
        "quantized_by": "test suite",
    }
    worker = start_worker(
        tmp_path,
        *("--model", f"tiny={converted}", "--model", f"plain={model_path}"),
        *("--ctx-size", "512", "--parallel", "1", "--threads", str(THREADS)),
    )
    try:
        health = httpx.get(f"{worker.url}/health", timeout=10).json()
        assert health["model"]["path"] == str(converted.resolve())
        assert health["model"]["source"] == expected
        capacity = httpx.get(f"{worker.url}/capacity", timeout=10).json()
        assert capacity["model"]["source"] == expected
        assert capacity["models"]["tiny"]["model"]["source"] == expected
        # Per model: the second one, a GGUF without provenance keys, has none.
        assert capacity["models"]["plain"]["state"] == "ready"
        assert "source" not in capacity["models"]["plain"]["model"]
    finally:
        worker.stop()


@pytest.mark.e2e
def test_a_gguf_without_provenance_reports_no_source(worker: WorkerProcess) -> None:
    health = httpx.get(f"{worker.url}/health", timeout=10).json()
    assert health["model"]["sha256"] and "source" not in health["model"]
    capacity = httpx.get(f"{worker.url}/capacity", timeout=10).json()
    assert capacity["model"]["sha256"] and "source" not in capacity["model"]


def test_model_source_reads_base_models_and_skips_what_is_absent() -> None:
    meta = {
        "general.source.url": "https://example.org/m",
        "general.quantized_by": "someone",
        "general.base_model.count": "2",
        "general.base_model.0.name": "Base",
        "general.base_model.0.organization": "Org",
        "general.base_model.0.repo_url": "https://huggingface.co/org/base",
        "general.base_model.1.name": "Other",
    }
    assert model_source(lambda key: meta.get(key, "")) == {
        "url": "https://example.org/m",
        "quantized_by": "someone",
        "base_models": [
            {"name": "Base", "organization": "Org", "repo_url": "https://huggingface.co/org/base"},
            {"name": "Other"},
        ],
    }
    assert model_source(lambda key: "") == {}
    # A count that is not a number indexes nothing.
    bad = {"general.base_model.count": "many", "general.base_model.0.name": "Base"}
    assert model_source(lambda key: bad.get(key, "")) == {}
