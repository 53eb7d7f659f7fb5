"""IBM Granite 3.x (`GraniteForCausalLM`, `GraniteMoeForCausalLM`; llama.cpp arches `granite`,
`granitemoe`).

Facts from transformers' modeling_granite and llama.cpp's src/models/granite.cpp and its
converter (GraniteModel): the Llama block (Q/K permuted for llama.cpp's RoPE layout) with four
multipliers, written under llama.cpp's names: `embedding_multiplier` -> embedding_scale
(input embeddings times it), `residual_multiplier` -> residual_scale (each block's output
times it before the residual add), `attention_multiplier` -> attention.scale (replaces
1/sqrt(head_dim)), `logits_scaling` -> logit_scale (logits divided by it).
GraniteMoE: every layer sparse, softmax over the top-k router logits (llama.cpp: softmax, top-k,
renormalised: the same weights), experts of `intermediate_size` fused as [gate; up]
(`input_linear`) and `output_linear`, stacked by convert/families/moe.py.
"""

from __future__ import annotations

import gguf

from llorch.convert.families import llama, sparse
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_float,
    cfg_int,
    dims,
    expected_shapes,
)
from llorch.convert.families.moe import Experts

_T = gguf.MODEL_TENSOR


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    llama.write_hparams(model, w)
    w.add_embedding_scale(cfg_float(model, "embedding_multiplier", default=1.0))
    w.add_residual_scale(cfg_float(model, "residual_multiplier", default=1.0))
    w.add_attention_scale(cfg_float(model, "attention_multiplier"))
    w.add_logit_scale(cfg_float(model, "logits_scaling", default=1.0))


def plan(model: ModelInput) -> list[PlannedTensor]:
    if model.arch != gguf.MODEL_ARCH.GRANITE_MOE:
        return llama.plan(model)
    d = dims(model)
    ex = Experts(d.n_layer, cfg_int(model, "num_local_experts"), d.n_embd, d.n_ff)
    transforms = {
        _T.ATTN_Q: lambda name, w: llama.permute_rope(w, d.n_head),
        _T.ATTN_K: lambda name, w: llama.permute_rope(w, d.n_head_kv),
    }
    return sparse.plan(model, ex, expected_shapes(model, d), transforms)
