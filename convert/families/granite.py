"""IBM Granite 3.x dense (`GraniteForCausalLM`, llama.cpp arch `granite`).

Facts from transformers' modeling_granite and llama.cpp's src/models/granite.cpp and its
converter (GraniteModel): the Llama block (Q/K permuted for llama.cpp's RoPE layout) with four
multipliers, written under llama.cpp's names: `embedding_multiplier` -> embedding_scale
(input embeddings times it), `residual_multiplier` -> residual_scale (each block's output
times it before the residual add), `attention_multiplier` -> attention.scale (replaces
1/sqrt(head_dim)), `logits_scaling` -> logit_scale (logits divided by it).
"""

from __future__ import annotations

import gguf

from llorch.convert.families import llama
from llorch.convert.families.base import ModelInput, PlannedTensor, cfg_float


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    llama.write_hparams(model, w)
    w.add_embedding_scale(cfg_float(model, "embedding_multiplier", default=1.0))
    w.add_residual_scale(cfg_float(model, "residual_multiplier", default=1.0))
    w.add_attention_scale(cfg_float(model, "attention_multiplier"))
    w.add_logit_scale(cfg_float(model, "logits_scaling", default=1.0))


def plan(model: ModelInput) -> list[PlannedTensor]:
    return llama.plan(model)
