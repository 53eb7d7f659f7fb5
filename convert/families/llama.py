"""Llama 1/2/3/3.1/3.2, Yi and Mistral (llama.cpp arch `llama`).

Transforms (facts from llama.cpp convert_hf_to_gguf.py LlamaModel and transformers'
modeling_llama): HF stores Q and K with the rotary halves split across the head dimension
("rotate_half"), llama.cpp's rope pairs adjacent values, so Q and K rows are permuted per head.
Llama 3.1+ `rope_type: llama3` adds a `rope_freqs` tensor of frequency divisors. Tied
embeddings: the checkpoint has no lm_head and llama.cpp falls back to token_embd.
"""

from __future__ import annotations

import gguf
import numpy as np

from convert.errors import ConfigError
from convert.families.base import (
    ModelInput,
    PlannedTensor,
    constant_tensor,
    dims,
    expected_shapes,
    llama3_rope_factors,
    map_tensors,
    rope_params,
    write_common,
)

_T = gguf.MODEL_TENSOR


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half layout -> llama.cpp interleaved layout, per head (weights and biases)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    d = write_common(model, w)
    w.add_rope_dimension_count(d.head_dim)
    rp = rope_params(model)
    kind = rp.get("rope_type", "default")
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rp["factor"]))
    elif kind not in ("default", "llama3"):
        raise ConfigError(
            f"{model.folder / 'config.json'}: rope_type {kind!r} is not supported for "
            f"{model.hf_architecture} (supported: default, linear, llama3)"
        )


def plan(model: ModelInput) -> list[PlannedTensor]:
    d = dims(model)
    transforms = {
        _T.ATTN_Q: lambda name, w: permute_rope(w, d.n_head),
        _T.ATTN_K: lambda name, w: permute_rope(w, d.n_head_kv),
    }
    plans = map_tensors(model, transforms=transforms, expected=expected_shapes(model, d))
    factors = llama3_rope_factors(model, d.head_dim)
    if factors is not None:
        plans.append(constant_tensor(gguf.TENSOR_NAMES[_T.ROPE_FREQS] + ".weight", factors))
    return plans
