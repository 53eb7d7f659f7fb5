"""OLMoE (`OlmoeForCausalLM`, llama.cpp arch `olmoe`).

Facts from transformers' modeling_olmoe and llama.cpp's src/models/olmoe.cpp:
- Llama-style blocks with RMS norms over the whole Q and K projections (q_norm of hidden_size,
  k_norm of kv heads x head_dim) before RoPE; llama.cpp's tensors are n_embd wide for both,
  so only checkpoints without grouped-query attention fit (as released: 16 heads, 16 kv heads).
- Rotate-half RoPE, run as NEOX by llama.cpp: no Q/K permutation.
- Every layer is sparse: softmax router (`mlp.gate`, kept F32), top-k experts of
  `intermediate_size` (llama.cpp's n_ff), stacked by convert/families/moe.py, never
  renormalised (`norm_topk_prob` must be false). `clip_qkv` has no llama.cpp counterpart here.
"""

from __future__ import annotations

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families import sparse
from llorch.convert.families.base import ModelInput, PlannedTensor, cfg_int, dims, expected_shapes
from llorch.convert.families.moe import Experts

_T = gguf.MODEL_TENSOR


def _check(model: ModelInput) -> None:
    where = model.folder / "config.json"
    sparse.check_sparse_layers(model, norm_topk=False)
    if model.config.get("clip_qkv") is not None:
        raise ConfigError(f"{where}: clip_qkv is not supported by llama.cpp's olmoe graph")
    d = dims(model)
    if d.n_head_kv != d.n_head:
        raise ConfigError(
            f"{where}: num_key_value_heads={d.n_head_kv} != num_attention_heads={d.n_head}: "
            "llama.cpp's olmoe graph normalises K over the full hidden width (no GQA)"
        )


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    sparse.write_hparams(model, w, cfg_int(model, "num_experts", "num_local_experts"))


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    d = dims(model)
    n_expert = cfg_int(model, "num_experts", "num_local_experts")
    expected = expected_shapes(model, d)
    expected[_T.ATTN_Q_NORM] = (d.n_head * d.head_dim,)
    expected[_T.ATTN_K_NORM] = (d.n_head_kv * d.head_dim,)
    return sparse.plan(model, Experts(d.n_layer, n_expert, d.n_embd, d.n_ff), expected)
