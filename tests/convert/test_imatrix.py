"""Importance matrices and the types that need one, against llama.cpp's own tools
(llama-imatrix, llama-quantize: tests/llama_tools.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from llama_tools import calibration_text, tool
from support import THREADS
from tiny_hf import tiny_llama

from llorch.cli import main
from llorch.convert import convert, imatrix, llamacpp
from llorch.convert import writer as gw
from llorch.convert.errors import ImatrixError, ImatrixRequiredError, OutTypeError, QuantizeError

CHUNK = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A one-layer Llama whose rows are 256 wide (one QK_K block: the IQ types apply), its F16
    GGUF and a calibration text."""
    base = tmp_path_factory.mktemp("imatrix")
    src = tiny_llama(base / "src", hidden=256, seed=3)
    f16 = base / "f16.gguf"
    convert(src, f16, outtype="f16", verify=False)
    calib = calibration_text(base / "calib.txt", lines=40)
    return {"base": base, "src": src, "f16": f16, "calib": calib}


@pytest.fixture(scope="module")
def ref_imatrix(tiny: dict[str, Path]) -> Path:
    """llama-imatrix's matrix of the tiny model on its calibration text."""
    return llama_imatrix(tiny["f16"], tiny["calib"], tiny["base"] / "ref.imatrix.gguf")


def llama_imatrix(model: Path, calib: Path, out: Path, *extra: str) -> Path:
    cmd = [str(tool("llama-imatrix")), "-m", str(model), "-f", str(calib), "-o", str(out)]
    cmd += ["-c", str(CHUNK), "-b", str(CHUNK), "-t", str(THREADS), "--no-ppl", *extra]
    subprocess.run(cmd, check=True, capture_output=True, cwd=calib.parent)
    return out


def llama_quantize(src: Path, dst: Path, ftype: str, *extra: str) -> Path:
    cmd = [str(tool("llama-quantize")), *extra, str(src), str(dst), ftype.upper(), "2"]
    subprocess.run(cmd, check=True, capture_output=True)
    return dst


def assert_same_matrix(ours: imatrix.Imatrix, ref: imatrix.Imatrix) -> None:
    assert sorted(ours.entries) == sorted(ref.entries)
    assert (ours.chunk_count, ours.chunk_size) == (ref.chunk_count, ref.chunk_size)
    for name, e in ref.entries.items():
        got = ours.entries[name]
        np.testing.assert_array_equal(got.counts, e.counts, err_msg=name)
        # llama-imatrix sums in float32 one token after another; we sum in float64
        np.testing.assert_allclose(got.sums, e.sums, rtol=1e-4, atol=1e-6, err_msg=name)


def test_types_needing_an_imatrix_are_those_llamacpp_refuses(tiny: dict[str, Path]) -> None:
    """Every type llama.cpp's quantizer writes is accepted; without an imatrix it refuses
    exactly NEEDS_IMATRIX (on a model whose rows fit every type's block)."""
    refused = set()
    for name, ftype in sorted(gw.quantizer_types().items()):
        out = tiny["base"] / f"noimx-{name}.gguf"
        try:
            llamacpp.quantize(tiny["f16"], out, ftype, n_threads=THREADS)
        except QuantizeError as exc:
            assert "imatrix" in str(exc), (name, str(exc))
            refused.add(name)
        else:
            llamacpp.check_loads(out)
        out.unlink(missing_ok=True)
    assert refused == gw.NEEDS_IMATRIX
    assert {"iq1_s", "iq1_m", "iq4_xs", "iq4_nl", "tq1_0", "tq2_0", "q2_k"} <= set(
        gw.all_outtypes()
    )


def test_type_needing_imatrix_refused_before_any_work(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    planned: list[int] = []
    with pytest.raises(ImatrixRequiredError, match=r"'iq2_xxs' needs an importance matrix"):
        convert(tiny["src"], tmp_path / "o.gguf", outtype="iq2_xxs", on_plan=planned.append)
    assert planned == [] and list(tmp_path.iterdir()) == []
    code = main(["convert", str(tiny["src"]), "-o", str(tmp_path / "o.gguf"), "--outtype", "IQ1_S"])
    assert code == 2 and "--imatrix" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutTypeError, match="nvfp4"):
        convert(tiny["src"], tmp_path / "o.gguf", outtype="nvfp4")


def test_imatrix_equals_llama_imatrix(
    tiny: dict[str, Path], ref_imatrix: Path, tmp_path: Path
) -> None:
    ref_path = ref_imatrix
    out = tmp_path / "ours.imatrix.gguf"
    code = main(
        ["imatrix", str(tiny["f16"]), str(tiny["calib"]), "-o", str(out), "--chunk", str(CHUNK)]
    )
    assert code == 0
    ours, ref = imatrix.load(out), imatrix.load(ref_path)
    assert_same_matrix(ours, ref)
    assert ours.chunk_count == len(tiny_tokens(tiny)) // CHUNK
    assert ours.datasets == [str(tiny["calib"])]
    # the file is llama.cpp's format: its own quantizer takes it
    q = llama_quantize(tiny["f16"], tmp_path / "q.gguf", "iq2_xxs", "--imatrix", str(out))
    llamacpp.check_loads(q)
    # --chunks bounds the chunks; too short a text is a clear error
    part = imatrix.compute(tiny["f16"], tiny["calib"], chunk=CHUNK, chunks=3)
    assert part.chunk_count == 3 and part.entries["blk.0.ffn_up.weight"].counts[0] == 3 * CHUNK
    with pytest.raises(ImatrixError, match=r"at least 8192 are needed for chunks of 4096"):
        imatrix.compute(tiny["f16"], tiny["calib"], chunk=4096)


def test_decodes_after_the_first_stop_at_the_last_weight(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first decode, each is stopped once the last `blk.*` input is read: the output
    matrix runs once, not per chunk, and the sums equal those of decodes run to the end."""
    asked: list[str] = []
    collect = imatrix._Collector._collect

    def spy(self: imatrix._Collector, ptr: int, ask: bool) -> bool:
        if ask:
            t = imatrix._Tensor.from_address(ptr)
            if self.op(t) == "MUL_MAT":
                asked.append(imatrix._weight_name(imatrix._Tensor.from_address(t.src[0]).name))
        return collect(self, ptr, ask)

    monkeypatch.setattr(imatrix._Collector, "_collect", spy)
    stopped = imatrix.compute(tiny["f16"], tiny["calib"], chunk=CHUNK, chunks=4)
    # the output matrix (output.weight, or token_embd.weight when tied: the tiny model's)
    heads = [name for name in asked if not name.startswith("blk.")]
    assert stopped.chunk_count == 4 and len(heads) == 1
    asked.clear()
    # per_decode kept at None: every decode runs to the end
    never = property(lambda _: None, lambda *_: None)
    monkeypatch.setattr(imatrix._Collector, "per_decode", never, raising=False)
    whole = imatrix.compute(tiny["f16"], tiny["calib"], chunk=CHUNK, chunks=4)
    assert [name for name in asked if not name.startswith("blk.")] == heads * 4
    assert sorted(stopped.entries) == sorted(whole.entries)
    for name, e in whole.entries.items():
        np.testing.assert_array_equal(stopped.entries[name].sums, e.sums, err_msg=name)
        np.testing.assert_array_equal(stopped.entries[name].counts, e.counts, err_msg=name)


# Stopped the hardest way at a chosen point: SIGKILL from inside, after chunk 5 (saved at 4).
_KILLED_AFTER_5 = """
import os, signal, sys
from llorch.convert import imatrix
def on_chunk(p):
    if p.chunk == 5:
        os.kill(os.getpid(), signal.SIGKILL)
imatrix.compute(sys.argv[1], sys.argv[2], chunk=int(sys.argv[3]), on_chunk=on_chunk,
                partial=imatrix.partial_path(sys.argv[4]), save_every=2)
"""


def test_kill_9_then_rerun_continues_to_the_same_sums(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llorch imatrix` killed with SIGKILL after chunk 5 continues from the sums saved after
    chunk 4 and ends with the sums, to the bit, of a run never stopped; the progress file is
    gone once the output is written; progress on other inputs is not taken."""
    out = tmp_path / "m.imatrix.gguf"
    model, calib = str(tiny["f16"]), str(tiny["calib"])
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_5, model, calib, str(CHUNK), str(out)]
    )
    assert killed.returncode == -9
    partial = imatrix.partial_path(out)
    assert partial.exists() and not out.exists()
    args = ["imatrix", model, calib, "-o", str(out), "--chunk", str(CHUNK), "--save-every", "2"]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resumed_after"] == 4
    assert not partial.exists()
    whole = imatrix.compute(tiny["f16"], tiny["calib"], chunk=CHUNK)
    resumed = imatrix.load(out)
    assert resumed.chunk_count == whole.chunk_count > 5
    for name, e in whole.entries.items():  # the file is float32: equal after that rounding
        np.testing.assert_array_equal(resumed.entries[name].sums, e.sums.astype(np.float32))
        np.testing.assert_array_equal(resumed.entries[name].counts, e.counts)
    # progress made with another chunk size is not this run's: it starts over
    subprocess.run([sys.executable, "-c", _KILLED_AFTER_5, model, calib, "32", str(out)])
    assert partial.exists()
    assert main([*args, "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resumed_after"] == 0
    again = imatrix.load(out)
    for name, e in resumed.entries.items():
        np.testing.assert_array_equal(again.entries[name].sums, e.sums)


def tiny_tokens(tiny: dict[str, Path]) -> list[int]:
    with llamacpp.load_model(tiny["f16"]) as model:
        return imatrix.tokenize_calibration(model, tiny["calib"].read_text())


def test_legacy_dat_reads_as_llama_quantize_reads_it(
    tiny: dict[str, Path], ref_imatrix: Path, tmp_path: Path
) -> None:
    dat = llama_imatrix(tiny["f16"], tiny["calib"], tmp_path / "ref.dat", "--output-format", "dat")
    gg = ref_imatrix
    from_dat, from_gguf = imatrix.load(dat).quantizer_data(), imatrix.load(gg).quantizer_data()
    assert sorted(from_dat) == sorted(from_gguf)
    for name in from_gguf:
        np.testing.assert_allclose(from_dat[name], from_gguf[name], rtol=1e-5, err_msg=name)
    ref = llama_quantize(tiny["f16"], tmp_path / "ref.gguf", "iq2_xs", "--imatrix", str(dat))
    ours = tmp_path / "ours.gguf"
    convert(tiny["src"], ours, outtype="iq2_xs", verify=False, imatrix=str(dat))
    assert ours.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("outtype", ["iq2_xxs", "q4_k_m"])
def test_quantized_with_imatrix_is_byte_identical_to_llama_quantize(
    tiny: dict[str, Path], ref_imatrix: Path, tmp_path: Path, outtype: str
) -> None:
    im = ref_imatrix
    ref = llama_quantize(tiny["f16"], tmp_path / "ref.gguf", outtype, "--imatrix", str(im))
    ours = tmp_path / "ours.gguf"
    report = convert(tiny["src"], ours, outtype=outtype, imatrix=str(im), verify=False)
    assert ours.read_bytes() == ref.read_bytes()
    assert report.imatrix is not None and report.imatrix["entries"] == 7
    assert report.imatrix["computed"] is False


def test_convert_computes_imatrix_from_calibration_text(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """--imatrix CALIB.txt: computed on the F16 the quantizer starts from; the IQ2_XXS file
    equals llama-quantize's with our matrix of the same F16, and runs."""
    out = tmp_path / "iq2.gguf"
    args = ["convert", str(tiny["src"]), "-o", str(out), "--outtype", "iq2_xxs", "--json"]
    assert main([*args, "--imatrix", str(tiny["calib"]), "--imatrix-chunk", str(CHUNK)]) == 0
    reader = gguf.GGUFReader(out)
    field = reader.get_field("quantize.imatrix.file")
    assert field is not None and field.contents() == str(tiny["calib"])
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.ffn_up.weight"] == "IQ2_XXS"
    ours_im = tmp_path / "ours.imatrix.gguf"
    imatrix.save(imatrix.compute(tiny["f16"], tiny["calib"], chunk=CHUNK), ours_im)
    ref = llama_quantize(tiny["f16"], tmp_path / "ref.gguf", "iq2_xxs", "--imatrix", str(ours_im))
    ref_types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(ref).tensors}
    assert types == ref_types
    ref_data = {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(ref).tensors}
    assert {t.name: np.asarray(t.data).tobytes() for t in reader.tensors} == ref_data
    logits = llamacpp.logits(out, [0, 5, 9, 17, 33])
    assert np.isfinite(logits).all()


def test_tensor_type_overrides_as_llama_quantize(tiny: dict[str, Path], tmp_path: Path) -> None:
    ref = llama_quantize(
        tiny["f16"], tmp_path / "ref.gguf", "q4_k_m", "--tensor-type", "ffn_down=q8_0"
    )
    ours = tmp_path / "ours.gguf"
    convert(tiny["src"], ours, outtype="q4_k_m", tensor_types=["ffn_down=Q8_0"], verify=False)
    assert ours.read_bytes() == ref.read_bytes()
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(ours).tensors}
    assert types["blk.0.ffn_down.weight"] == "Q8_0"
    for bad, said in (("ffn_down", "REGEX=TYPE"), ("ffn_down=q9_z", "unknown type 'q9_z'")):
        with pytest.raises(OutTypeError, match=said):
            convert(tiny["src"], ours, outtype="q4_k_m", tensor_types=[bad], overwrite=True)
    with pytest.raises(OutTypeError, match="written directly"):
        convert(tiny["src"], ours, outtype="f16", imatrix=str(tiny["calib"]), overwrite=True)


QWEN3_MOE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "norm_topk_prob": True,
}


def test_moe_imatrix_per_expert_equals_llama_imatrix(checkpoint: Any, tmp_path: Path) -> None:
    built = checkpoint("Qwen3MoeForCausalLM", "Qwen3MoeConfig", QWEN3_MOE, tokenizer="qwen2")
    f16 = tmp_path / "moe.gguf"
    convert(built.folder, f16, outtype="f16", verify=False)
    calib = calibration_text(tmp_path / "calib.txt", lines=30)
    ref = imatrix.load(llama_imatrix(f16, calib, tmp_path / "ref.imatrix.gguf"))
    ours = imatrix.compute(f16, calib, chunk=CHUNK)
    assert_same_matrix(ours, ref)
    experts = ours.entries["blk.0.ffn_down_exps.weight"]
    assert experts.counts.shape == (4,) and experts.sums.shape == (4, 32)
    # every token is routed to two of the four experts
    assert experts.counts.sum() == 2 * ours.chunk_count * CHUNK
