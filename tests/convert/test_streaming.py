"""The streaming writer writes the bytes of encoding each whole float32 tensor.

The reference is the writer as it was before streaming: every planned tensor loaded whole as
float32 by its loader, encoded (numpy casts for F32/F16, gguf-py's quantizer for BF16 and
Q8_0) and written with gguf-py's GGUFWriter.write_tensor_data. Checkpoints are hand-written
safetensors files (BF16, F16, F32) holding NaNs, infinities, subnormals, halfway values and
zero blocks; the block size is made small so tensors span several blocks and end in a part.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from llorch.convert import convert, encoding
from llorch.convert import writer as gw
from llorch.convert.families import llama
from llorch.convert.families.base import PlannedTensor, StoredTensor

_Q = gguf.GGMLQuantizationType
HIDDEN, FF, HEADS, KV_HEADS = 64, 80, 4, 2  # FF 80: ffn_down rows are not Q8_0 blocks (F16)
NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def _old_encode(data: np.ndarray, qtype: _Q) -> np.ndarray:
    if qtype == _Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == _Q.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)


def _reference_write(
    path: Path, writer: gguf.GGUFWriter, plans: Sequence[PlannedTensor], outtype: str, **_: Any
) -> gw.WriteStats:
    types = [gw.tensor_type(p, outtype) for p in plans]
    for p, qtype in zip(plans, types, strict=True):
        shape, dtype, nbytes = gw._info(p, qtype)
        raw = None if qtype in (_Q.F32, _Q.F16) else qtype
        writer.add_tensor_info(p.name, shape, dtype, nbytes, raw)
    writer.open_output_file(path)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for p, qtype in zip(plans, types, strict=True):
        data = p.load()
        assert data.dtype == np.float32 or p.qtype is not None
        stored = np.ascontiguousarray(data) if p.qtype is not None else _old_encode(data, qtype)
        writer.write_tensor_data(stored)
    writer.close()
    return gw.WriteStats(len(plans), path.stat().st_size)


def _specials(rng: np.random.Generator, n: int) -> np.ndarray:
    """Float32 values at the edges of F16/BF16/Q8_0 rounding, n of them."""
    f16_max, f16_tiny = 65504.0, 2.0**-24
    edge = np.array(
        [
            *(np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, f16_max, 65520.0, 1e6, -1e6),
            *(f16_tiny, f16_tiny / 2, f16_tiny * 1.5, 1e-40, -1e-42, 2.0**-14, 2.0**-15),
            *(1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8, 0.5, -1.5, 2.5),
        ],
        dtype=np.float32,
    )
    out = (rng.standard_normal(n) * 0.05).astype(np.float32)
    out[: len(edge)] = edge
    if n >= 256:  # matrices: whole Q8_0 blocks
        out[64:96] = 0.0  # a zero block
        out[96:128] = np.arange(32, dtype=np.float32) - 16  # exact halves once scaled
        out[128:160] = 1e-39  # a block whose 1/scale overflows
    return out


# NaNs with payloads, the quiet bit clear (signalling) and set, per stored dtype
NANS = {"BF16": [0x7F81, 0xFFA5, 0x7FC3], "F16": [0x7C01, 0xFE55], "F32": [0x7F800001, 0xFFC0FFEE]}


def _stored(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # the stored bits: float32's upper half, rounded to nearest even
        bits = values.view(np.uint32).astype(np.uint64)
        out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    else:
        out = values.astype(NUMPY[dtype])
    flat = out.reshape(-1).view(np.uint32 if dtype == "F32" else np.uint16)
    flat[-len(NANS[dtype]) :] = NANS[dtype]
    return out


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    header: dict[str, Any] = {}
    offset = 0
    for name, data in tensors.items():
        end = offset + data.nbytes
        header[name] = {"dtype": dtype, "shape": list(data.shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header).encode()
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for data in tensors.values():
            f.write(data.tobytes())


def _llama(folder: Path, helpers: Any, dtype: str, *, tied: bool = False) -> Path:
    folder.mkdir()
    n_vocab = helpers.make_spm(folder)
    rng = np.random.default_rng(0)
    kv = HIDDEN // HEADS * KV_HEADS
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (n_vocab, HIDDEN)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (kv, HIDDEN),
            p + "self_attn.v_proj.weight": (kv, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "mlp.gate_proj.weight": (FF, HIDDEN),
            p + "mlp.up_proj.weight": (FF, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, FF),
        }
    shapes["model.norm.weight"] = (HIDDEN,)
    if not tied:
        shapes["lm_head.weight"] = (n_vocab, HIDDEN)
    tensors = {
        name: _stored(_specials(rng, int(np.prod(shape))).reshape(shape), dtype)
        for name, shape in shapes.items()
    }
    names = list(tensors)
    _write_safetensors(folder / "model-1.safetensors", {n: tensors[n] for n in names[:9]}, dtype)
    _write_safetensors(folder / "model-2.safetensors", {n: tensors[n] for n in names[9:]}, dtype)
    index = {n: f"model-{1 + (i >= 9)}.safetensors" for i, n in enumerate(names)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FF,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": n_vocab,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": tied,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_streamed_bytes_equal_whole_tensor_encoding(
    dtype: str, helpers: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _llama(tmp_path / "hf", helpers, dtype, tied=dtype == "F16")
    monkeypatch.setattr(gw, "BLOCK", 96)  # several blocks a tensor, the last one partial
    for outtype in ("f32", "f16", "bf16", "q8_0"):
        fast = tmp_path / f"fast-{outtype}.gguf"
        convert(src, fast, outtype=outtype, verify=False)
        with monkeypatch.context() as m:
            m.setattr(gw, "write_gguf", _reference_write)
            ref = tmp_path / f"ref-{outtype}.gguf"
            convert(src, ref, outtype=outtype, verify=False)
        assert fast.read_bytes() == ref.read_bytes(), (dtype, outtype)
        types = {t.name: t.tensor_type for t in gguf.GGUFReader(fast).tensors}
        assert types["blk.0.attn_norm.weight"] == _Q.F32  # norms stay F32
        if outtype == "q8_0":
            assert types["blk.0.ffn_down.weight"] == _Q.F16  # rows of 80: no Q8_0 blocks
            assert types["blk.0.attn_q.weight"] == _Q.Q8_0


def test_only_untransformed_tensors_are_streamed(helpers: Any, tmp_path: Path) -> None:
    from llorch.convert.api import _model_input
    from llorch.detector import detect

    model = _model_input(detect(_llama(tmp_path / "hf", helpers, "BF16")))
    plans = {p.name: p for p in llama.plan(model)}
    assert isinstance(plans["token_embd.weight"].load, StoredTensor)
    assert gw._stored(plans["token_embd.weight"]) is not None
    assert gw._stored(plans["blk.0.attn_q.weight"]) is None  # the Q/K permutation


def _all_codes() -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


@pytest.mark.parametrize("qtype", [_Q.F32, _Q.F16, _Q.BF16, _Q.Q8_0])
def test_every_bf16_code_converts_as_through_float32(qtype: _Q) -> None:
    rng = np.random.default_rng(1)
    for codes in (_all_codes(), rng.permutation(_all_codes())):
        as_f32 = (codes.astype(np.uint32) << 16).view(np.float32)  # exact
        want = _old_encode(as_f32.reshape(-1, 32) if qtype == _Q.Q8_0 else as_f32, qtype)
        got = gw.encode(codes, qtype, "BF16")
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes()


@pytest.mark.parametrize("qtype", [_Q.F32, _Q.F16, _Q.BF16, _Q.Q8_0])
def test_every_f16_code_converts_as_through_float32(qtype: _Q) -> None:
    codes = _all_codes().view(np.float16)
    as_f32 = np.array(codes, dtype=np.float32)  # Checkpoint.load_f32's widening
    want = _old_encode(as_f32.reshape(-1, 32) if qtype == _Q.Q8_0 else as_f32, qtype)
    got = gw.encode(codes, qtype, "F16")
    assert np.asarray(got).tobytes() == np.asarray(want).tobytes()


def test_q8_0_equals_gguf_py_on_random_and_edge_blocks() -> None:
    rng = np.random.default_rng(2)
    for scale in (1e-3, 0.05, 1.0, 300.0):
        values = (rng.standard_normal(1 << 16) * scale).astype(np.float32)
        values[:32] = (np.arange(32) - 16) * np.float32(0.5)  # halves after scaling
        values[32:64] = rng.integers(-127, 128, 32) + np.float32(0.5)
        values[64:96] = 0.0
        blocks = values.reshape(-1, 32)
        want = gguf.quants.quantize(values.reshape(-1, 2048), _Q.Q8_0).reshape(-1)
        assert encoding._q8_0(blocks).tobytes() == want.tobytes()
