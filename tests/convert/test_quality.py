"""Quality of a quantization (convert/quality.py) against llama-perplexity --kl-divergence,
built from the same llama.cpp (tests/convert/test_imatrix.py's `tool`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import pytest
from llama_tools import calibration_text, tool
from support import THREADS
from tiny_hf import tiny_llama
from tokenizers import Tokenizer

from llorch.cli import main
from llorch.convert import convert, llamacpp, quality
from llorch.convert import writer as gw
from llorch.convert.errors import OutTypeError, QualityError
from llorch.detector import detect

CHUNK = 64


def peaked_llama(folder: Path) -> Path:
    """tiny_llama with heavy-tailed weights (Student's t, 3 degrees of freedom) at a scale that
    makes its next-token distributions peaked: quantization error shows, and grows as bits
    shrink."""
    from safetensors.numpy import load_file, save_file

    tiny_llama(folder, hidden=256, seed=5)
    rng = np.random.default_rng(5)
    tensors = load_file(str(folder / "model.safetensors"))
    for name, t in tensors.items():
        if t.ndim == 2:
            tensors[name] = (rng.standard_t(3, t.shape) * 0.12).astype(np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("quality")
    src = peaked_llama(base / "src")
    f16 = base / "f16.gguf"
    convert(src, f16, outtype="f16", verify=False)
    return {"base": base, "src": src, "f16": f16, "eval": calibration_text(base / "eval.txt", 40)}


def llama_perplexity(base: Path, model: Path, text: Path, work: Path) -> dict[str, float]:
    exe = str(tool("llama-perplexity"))
    kld = work / "base.kld"
    common = ["-f", str(text), "-c", str(CHUNK), "-b", str(CHUNK), "-t", str(THREADS)]
    if not kld.exists():
        cmd = [exe, "-m", str(base), *common, "--kl-divergence-base", str(kld)]
        subprocess.run(cmd, check=True, capture_output=True)
    cmd = [exe, "-m", str(model), *common, "--kl-divergence-base", str(kld), "--kl-divergence"]
    # llama.cpp's logger writes from a thread that exit may cut short (common/log.cpp leaks it
    # on purpose, "logs may be lost if not flushed before the program exits"): run again
    # until the summary came through
    for _ in range(5):
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        log = out.stdout + out.stderr
        if "Same top p:" in log and "Mean PPL(base)" in log:
            break

    def number(label: str) -> float:
        found = re.search(re.escape(label) + r"\s*:\s*([-0-9.]+)", log)
        assert found, (label, log[-2000:])
        return float(found.group(1))

    return {
        "ppl": number("Mean PPL(Q)"),
        "ppl_reference": number("Mean PPL(base)"),
        "kld_mean": number("Mean    KLD"),
        "kld_p99": number("99.0%   KLD"),
        "top1": number("Same top p") / 100,
    }


def test_quality_agrees_with_llama_perplexity(model: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "q3.gguf"
    args = ["convert", str(model["src"]), "-o", str(out), "--outtype", "q3_k_m", "--no-verify"]
    assert main([*args, "--quality", str(model["eval"]), "--quality-chunk", str(CHUNK)]) == 0
    report = convert(
        model["src"],
        out,
        outtype="q3_k_m",
        verify=False,
        overwrite=True,
        quality=model["eval"],
        quality_chunk=CHUNK,
    )
    assert report.quality is not None
    ours = report.quality
    ref = llama_perplexity(model["f16"], out, model["eval"], tmp_path)
    assert ours["reference"] == "f16" and ours["tokens"] > 500
    assert ours["kld_mean"] > 1e-3  # a real difference to agree on
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, rel=0.01), key
    # the numbers are in the file's metadata (llorch detect shows them), its tensors unchanged
    shown = detect(out).to_json()["provenance"]
    assert shown["llorch.quality.top1"] == pytest.approx(ours["top1"], rel=1e-6)
    assert shown["llorch.quality.tokens"] == ours["tokens"]
    plain = tmp_path / "plain.gguf"
    convert(model["src"], plain, outtype="q3_k_m", verify=False)
    tensors = [(t.name, t.data.tobytes()) for t in gguf.GGUFReader(out).tensors]
    assert tensors == [(t.name, t.data.tobytes()) for t in gguf.GGUFReader(plain).tensors]


def test_kl_divergence_orders_types_by_their_bits(model: dict[str, Path]) -> None:
    order = ["q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k"]
    found = {}
    # One reference cache for every type, as convert-batch measures them: the reference's
    # log-probabilities are computed for the first type only, and every number equals a
    # measurement without the cache.
    cache = quality.ReferenceCache()
    for name in order:
        out = model["base"] / f"{name}.gguf"
        llamacpp.quantize(model["f16"], out, gw.quantizer_types()[name], n_threads=THREADS)
        found[name] = quality.measure(model["f16"], out, model["eval"], chunk=CHUNK, chunks=8)
        cached = quality.measure(
            model["f16"], out, model["eval"], chunk=CHUNK, chunks=8, cache=cache
        )
        assert cached == found[name]
        assert cache.used_bytes > 0 and len(cache._chunks) == 8
    kld = [found[n].kld_mean for n in order]
    top1 = [found[n].top1 for n in order]
    assert kld == sorted(kld, reverse=True), dict(zip(order, kld, strict=True))
    assert top1[0] < top1[-1] <= 1.0
    assert all(q.ppl_reference == found["q2_k"].ppl_reference for q in found.values())


def test_numbers_do_not_depend_on_the_threads(model: dict[str, Path]) -> None:
    """The numpy side runs a block of rows per thread: one block or three, the same numbers."""
    out = model["base"] / "threads-q4_k_m.gguf"
    llamacpp.quantize(model["f16"], out, gw.quantizer_types()["q4_k_m"], n_threads=THREADS)
    found = [
        quality.measure(model["f16"], out, model["eval"], chunk=CHUNK, chunks=4, n_threads=n)
        for n in (1, 3)
    ]
    assert found[0] == found[1] and found[0].kld_mean > 0


def test_quality_refusals(model: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(QualityError, match=r"at least 8192 are needed for chunks of 4096"):
        quality.measure(model["f16"], model["f16"], model["eval"], chunk=4096)
    with pytest.raises(OutTypeError, match="written directly"):
        convert(model["src"], tmp_path / "o.gguf", outtype="q8_0", quality=model["eval"])
    assert list(tmp_path.iterdir()) == []


def test_a_model_with_another_tokenizer_is_refused(model: dict[str, Path], tmp_path: Path) -> None:
    """The same weights with two tokens' ids swapped: read against the reference, whether the
    reference is evaluated or its chunks come from the cache of an earlier measurement."""
    other_src = tmp_path / "src"
    shutil.copytree(model["src"], other_src)
    tokenizer = json.loads((other_src / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    ids = Tokenizer.from_file(str(model["src"] / "tokenizer.json")).encode(
        model["eval"].read_text()[:200]
    )
    a, b = (piece for piece, _ in Counter(ids.tokens).most_common(2))  # in the first chunk
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other_src / "tokenizer.json").write_text(json.dumps(tokenizer))
    other = tmp_path / "other.gguf"
    convert(other_src, other, outtype="f16", verify=False)
    with pytest.raises(QualityError, match="otherwise than the reference"):
        quality.measure(model["f16"], other, model["eval"], chunk=CHUNK, chunks=2)
    cache = quality.ReferenceCache()
    quality.measure(model["f16"], model["f16"], model["eval"], chunk=CHUNK, chunks=2, cache=cache)
    with pytest.raises(QualityError, match=r"otherwise than the reference .*\(chunk 1\)"):
        quality.measure(model["f16"], other, model["eval"], chunk=CHUNK, chunks=2, cache=cache)
