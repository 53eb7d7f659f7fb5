"""`llorch convert` output modes, default naming, llama.cpp-quantized types, and cached_gguf."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from llorch.cli import main
from llorch.convert import cached_gguf

TINY = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def test_convert_json_and_default_name(
    checkpoint: Any, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["convert", str(built.folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    out = Path(report["output"])
    assert out.parent == work and out.name == f"hf-{_size(report['parameters'])}-F16.gguf"
    assert report["verified"] is True and report["outtype"] == "f16"
    assert report["llama_arch"] == "llama" and report["n_tensors"] > 0


def _size(n: int) -> str:
    return gguf.size_label(n, 0, 0, 0)


@pytest.mark.parametrize("outtype", ["q4_k_m", "q5_k_m", "q6_k", "q4_0", "iq4_xs"])
def test_llama_cpp_quantized_types(
    outtype: str, checkpoint: Any, helpers: Any, tmp_path: Path, capsys: Any
) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    out = tmp_path / "q.gguf"
    assert main(["convert", str(built.folder), "-o", str(out), "--outtype", outtype]) == 0
    assert "tokenizer verified" in capsys.readouterr().out
    reader = gguf.GGUFReader(out)
    field = reader.get_field(gguf.Keys.General.FILE_TYPE)
    assert field is not None
    ftype = field.contents()
    assert gguf.LlamaFileType(ftype).name == f"MOSTLY_{outtype.upper()}"
    kinds = {t.tensor_type.name for t in reader.tensors}
    assert kinds - {"F32"}, kinds  # something was quantized
    result = helpers.parity(built.folder, out, built.n_vocab)
    print(f"{outtype}: rel={result.relative:.3g} argmax_agree={result.argmax_agree:.2f}")
    # random Gaussian weights are the worst case for 4-bit codes: a smoke bound, not accuracy
    assert np.isfinite(result.max_diff) and result.relative < 0.6


def test_cached_gguf_reuses_and_rekeys(checkpoint: Any, tmp_path: Path, monkeypatch: Any) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache"))
    first = cached_gguf(built.folder)
    assert first.is_file() and first.is_relative_to(tmp_path / "cache")
    stamp = first.stat().st_mtime_ns
    again = cached_gguf(str(built.folder))
    assert again == first and again.stat().st_mtime_ns == stamp
    q8 = cached_gguf(built.folder, outtype="q8_0")
    assert q8 != first and q8.parent != first.parent
    config = json.loads((built.folder / "config.json").read_text())
    (built.folder / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    changed = cached_gguf(built.folder)
    assert changed.parent != first.parent
    assert cached_gguf(changed) == changed  # a GGUF is returned as it is


def test_no_verify_is_loud(checkpoint: Any, tmp_path: Path, capsys: Any) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    out = tmp_path / "o.gguf"
    assert main(["convert", str(built.folder), "-o", str(out), "--no-verify", "--json"]) == 0
    captured = capsys.readouterr()
    assert "WARNING: --no-verify" in captured.err
    report = json.loads(captured.out)
    assert report["verified"] is False and report["verify_strings"] == 0
    assert any("verification skipped" in note for note in report["notes"])


def test_read_only_output_folder(checkpoint: Any, tmp_path: Path, capsys: Any) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    if os.geteuid() == 0:
        # Root writes into any folder its mode forbids; /proc takes no new file from anyone.
        locked = Path("/proc")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
    before = set(locked.iterdir())
    try:
        assert main(["convert", str(built.folder), "-o", str(locked / "o.gguf")]) == 2
        assert "cannot write output here" in capsys.readouterr().err
        assert not {p for p in locked.iterdir() if "o.gguf" in p.name} - before
    finally:
        if locked != Path("/proc"):
            locked.chmod(0o700)


def test_cached_gguf_does_not_rehash_unchanged_weights(
    checkpoint: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    from llorch import digests

    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "home" / "gguf"))
    hashed: list[str] = []
    real = digests._hash

    def counting(path: Path) -> str:
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(digests, "_hash", counting)
    first = cached_gguf(built.folder, cache_dir=tmp_path / "c")
    assert "model.safetensors" in hashed
    hashed.clear()
    assert cached_gguf(built.folder, cache_dir=tmp_path / "c") == first
    assert hashed == []
    weights = built.folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same content, new mtime: rehashed, same key
    assert cached_gguf(built.folder, cache_dir=tmp_path / "c") == first
    assert hashed == ["model.safetensors"]
