"""`--verify logits`: llama.cpp's logits on the output against transformers' on the checkpoint,
in the conversion report, the CLI and the batch provenance record."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llorch.cli import main
from llorch.convert import convert, llamacpp, verify_logits
from llorch.convert.families import llama

SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@pytest.fixture(autouse=True)
def _fresh_reference() -> None:
    verify_logits.reference.cache_clear()  # each test's checkpoint is its own


def test_report_has_cosine_and_top1(checkpoint: Any, helpers: Any, tmp_path: Path) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", SMALL)
    out = tmp_path / "out.gguf"
    report = convert(built.folder, out, outtype="f32", check_logits=True)
    lg = report.logits
    assert lg is not None and lg["min_cosine_required"] == 0.9999
    tokens = verify_logits.prompt_tokens(out)
    assert lg["tokens"] == len(tokens) >= 16
    # The same numbers, computed here from the two sides independently.
    want = helpers.reference_logits(built.folder, list(tokens))
    got = llamacpp.logits(out, list(tokens))
    assert lg["cosine_min"] == pytest.approx(float(helpers.cosines(got, want).min()), abs=1e-6)
    assert lg["cosine_min"] >= 0.9999 and lg["top1_agreement"] == 1.0
    assert lg["max_abs_diff"] == pytest.approx(float(np.abs(got - want).max()), rel=1e-3)
    assert lg["reference"].startswith("LlamaForCausalLM (transformers ")
    assert report.to_json()["logits"] == lg


def test_quantized_output_is_measured_not_bounded(checkpoint: Any, tmp_path: Path) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", SMALL)
    report = convert(built.folder, tmp_path / "q.gguf", outtype="q8_0", check_logits=True)
    assert report.logits is not None and report.logits["min_cosine_required"] is None
    assert 0.9 < report.logits["cosine_min"] < 1.0


def test_a_conversion_bug_fails_and_leaves_nothing(
    checkpoint: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Q/K left in HF's rotate-half layout: the tokenizer is fine, the logits are not."""
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", SMALL)
    monkeypatch.setattr(llama, "permute_rope", lambda w, n_head: w)
    with pytest.raises(verify_logits.LogitsMismatchError, match="cosine similarity"):
        convert(built.folder, tmp_path / "bad.gguf", outtype="f32", check_logits=True)
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".*.tmp")) == []


def test_missing_torch_is_a_clear_error(
    checkpoint: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", SMALL)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(verify_logits.LogitsUnavailableError, match="pip install torch"):
        convert(built.folder, tmp_path / "out.gguf", outtype="f32", check_logits=True)
    assert not (tmp_path / "out.gguf").exists()


def test_cli_verify_logits(checkpoint: Any, tmp_path: Path, capsys: Any) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", SMALL)
    out = tmp_path / "out.gguf"
    assert main(["convert", str(built.folder), "-o", str(out), "--verify", "logits"]) == 0
    text = capsys.readouterr().out
    assert "logits vs LlamaForCausalLM" in text and "top-1 agreement 100%" in text
    args = ["convert", str(built.folder), "-o", str(out), "--verify", "logits", "--no-verify"]
    assert main(args) == 2


def test_batch_records_logits_for_every_output(
    checkpoint: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llorch.convert.batch import convert_batch, load_manifest

    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache" / "gguf"))
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", SMALL)
    manifest = tmp_path / "batch.toml"
    manifest.write_text(
        f'outtypes = ["f16", "q8_0"]\nverify = "logits"\n[[models]]\nsource = "{built.folder}"\n'
    )
    plan = load_manifest(manifest)
    assert plan.jobs[0].verify_logits and plan.jobs[0].options()["verify_logits"] is True
    report = convert_batch(plan, tmp_path / "out")
    (job,) = report.jobs
    assert job.ok, job.error
    by_type = {o["outtype"]: o["verification"]["logits"] for o in job.outputs}
    assert by_type["f16"]["cosine_min"] >= 0.999 and by_type["f16"]["top1_agreement"] == 1.0
    assert by_type["q8_0"]["min_cosine_required"] is None
    for sidecar in (tmp_path / "out").glob("*.provenance.json"):
        record = json.loads(sidecar.read_text())
        assert record["verification"]["logits"] == by_type[record["outtype"]]
