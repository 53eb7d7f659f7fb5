"""Llama 1/2/3/3.1/3.2, Yi and Mistral (llama.cpp arch `llama`).

Transforms (facts from llama.cpp convert_hf_to_gguf.py LlamaModel and transformers'
modeling_llama): HF stores Q and K with the rotary halves split across the head dimension
("rotate_half"), llama.cpp's rope pairs adjacent values, so Q and K rows are permuted per head.
Llama 3.1+ `rope_type: llama3` adds a `rope_freqs` tensor of frequency divisors. Tied
embeddings: the checkpoint has no lm_head and llama.cpp falls back to token_embd.
Mixtral (llama.cpp runs it as `llama` with experts): the per-expert w1/w3/w2 matrices of
`block_sparse_moe.experts.E` are stacked into ffn_gate_exps/ffn_up_exps/ffn_down_exps
(expert-major, convert/families/moe.py), and `block_sparse_moe.gate` is the router
(ffn_gate_inp).
"""

from __future__ import annotations

import gguf
import numpy as np

from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_int,
    constant_tensor,
    dims,
    expected_shapes,
    map_tensors,
    write_common,
)
from llorch.convert.families.moe import Experts, claimed, expert_plans

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
    n_expert = model.config.get("num_local_experts")
    if n_expert:
        w.add_expert_count(int(n_expert))
        w.add_expert_used_count(cfg_int(model, "num_experts_per_tok"))
    w.add_rope_dimension_count(d.head_dim)
    rope.write_scaling(model, w, own=("llama3",))  # llama3: the rope_freqs tensor (plan)


def plan(model: ModelInput) -> list[PlannedTensor]:
    d = dims(model)
    transforms = {
        _T.ATTN_Q: lambda name, w: permute_rope(w, d.n_head),
        _T.ATTN_K: lambda name, w: permute_rope(w, d.n_head_kv),
    }
    n_expert = cfg_int(model, "num_local_experts", default=0)  # Mixtral
    experts = expert_plans(model, Experts(d.n_layer, n_expert, d.n_embd, d.n_ff))
    plans = map_tensors(
        model,
        transforms=transforms,
        expected=expected_shapes(model, d),
        claimed=claimed(experts),
    )
    plans.extend(experts)
    factors = rope.llama3_rope_factors(model, d.head_dim)
    if factors is not None:
        plans.append(constant_tensor(gguf.TENSOR_NAMES[_T.ROPE_FREQS] + ".weight", factors))
    return plans
