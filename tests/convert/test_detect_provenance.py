"""`llorch detect FILE.gguf` shows where a GGUF came from: its provenance keys, when present."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import pytest
from tiny_hf import hf_cache_repo, tiny_llama

from llorch.cli import main
from llorch.convert import convert
from llorch.convert.batch import convert_batch, load_manifest
from llorch.convert.batch import provenance as prov


def test_detect_shows_batch_provenance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache" / "gguf"))
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    commit = "beef" + "0" * 36
    hf_cache_repo(hub, "acme/tiny", tiny_llama(tmp_path / "staging"), commit)
    manifest = tmp_path / "batch.toml"
    manifest.write_text('outtypes = ["f16", "q8_0"]\n[[models]]\nsource = "hf:acme/tiny@main"\n')
    report = convert_batch(load_manifest(manifest), tmp_path / "out")
    assert report.ok, report.failed

    for record in report.jobs[0].outputs:
        capsys.readouterr()
        assert main(["detect", str(tmp_path / "out" / record["file"])]) == 0
        shown = json.loads(capsys.readouterr().out)["provenance"]
        assert shown[gguf.Keys.General.SOURCE_URL] == "https://huggingface.co/acme/tiny"
        assert shown[gguf.Keys.General.SOURCE_REPO_URL] == "https://huggingface.co/acme/tiny"
        assert shown[prov.KEY_REVISION] == commit
        files = dict(zip(shown[prov.KEY_FILES], shown[prov.KEY_SHA256], strict=True))
        assert files == record["source_files"]  # the sidecar's digests
        assert shown[prov.KEY_CONVERTER].startswith("llorch ")
        assert shown[prov.KEY_LLAMA_CPP].startswith("llama-cpp-python ")
        assert gguf.Keys.General.QUANTIZED_BY in shown


def test_plain_conversion_has_no_provenance(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "plain.gguf"
    convert(tiny_llama(tmp_path / "src"), out, outtype="f16", verify=False)
    assert main(["detect", str(out)]) == 0
    assert "provenance" not in json.loads(capsys.readouterr().out)
