"""Phi-3 / Phi-3.5 / Phi-4-mini (llama.cpp arch `phi3`).

Facts from transformers' modeling_phi3 and llama.cpp's src/models/phi3.cpp:
- Fused layouts are kept: `qkv_proj` is written as attn_qkv (rows Q, then K, then V) and
  `gate_up_proj` as ffn_up with 2*intermediate rows (gate half first), which llama.cpp's
  SwiGLU splits the same way HF's `chunk(2)` does.
- RoPE is rotate-half (NEOX); `partial_rotary_factor` sets the rotated dimensions.
- LongRoPE (`rope_type: longrope`, 128k variants) writes the per-dimension short/long factor
  tensors and the attention factor sqrt(1 + ln(s) / ln(original context)), s = max/original.
- llama.cpp disables Phi-3's sliding window (PR 13676), so it is not written; HF applies it
  only beyond `sliding_window` tokens (2047 for Phi-3-mini-4k).
"""

from __future__ import annotations

import math

import gguf
import numpy as np

from llorch.convert.errors import ConfigError
from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_int,
    constant_tensor,
    dims,
    expected_shapes,
    map_tensors,
    rope_params,
    rotary_dims,
    write_common,
)

_T = gguf.MODEL_TENSOR


def rope_dims(model: ModelInput) -> int:
    return rotary_dims(model, dims(model).head_dim)


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    write_common(model, w)
    w.add_rope_dimension_count(rope_dims(model))
    rp = rope_params(model)
    if rope.write_scaling(model, w, own=("longrope",)) == "longrope":
        n_ctx = cfg_int(model, "max_position_embeddings")
        orig = rope.original_context(model, rp)
        scale = n_ctx / orig
        attn = rp.get("attention_factor")
        if attn is None:
            attn = 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(orig))
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)  # as llama.cpp's converter
        w.add_rope_scaling_orig_ctx_len(orig)
        w.add_rope_scaling_attn_factors(float(attn))


def plan(model: ModelInput) -> list[PlannedTensor]:
    d = dims(model)
    expected = expected_shapes(model, d)
    q, kv = d.n_head * d.head_dim, d.n_head_kv * d.head_dim
    expected[_T.ATTN_QKV] = (q + 2 * kv, d.n_embd)
    expected[_T.FFN_UP] = (2 * d.n_ff, d.n_embd)
    plans = map_tensors(model, expected=expected)
    rp = rope_params(model)
    if rope.rope_type(model) == "longrope":
        n_half = rope_dims(model) // 2
        for key, kind in (
            ("long_factor", _T.ROPE_FACTORS_LONG),
            ("short_factor", _T.ROPE_FACTORS_SHORT),
        ):
            factors = np.asarray(rp.get(key) or [], dtype=np.float32)
            if factors.shape != (n_half,):
                raise ConfigError(
                    f"{model.folder / 'config.json'}: rope {key} has {factors.size} values, "
                    f"expected {n_half} (rotary dimensions / 2)"
                )
            plans.append(constant_tensor(gguf.TENSOR_NAMES[kind] + ".weight", factors))
    return plans
