"""Qwen1.5/Qwen2-MoE and Qwen3-MoE (llama.cpp arches `qwen2moe`, `qwen3moe`).

Facts from transformers' modeling_qwen2_moe/modeling_qwen3_moe and llama.cpp's
src/models/qwen2moe.cpp, qwen3moe.cpp:
- Attention as in Qwen2 (q/k/v biases) and Qwen3 (per-head q/k RMS norms, explicit head_dim);
  rotate-half RoPE, which llama.cpp runs as NEOX: no Q/K permutation.
- Every layer is sparse: softmax router (`mlp.gate`, kept F32), top-k experts of
  `moe_intermediate_size`, stacked by convert/families/moe.py. llama.cpp renormalises the
  top-k weights for qwen3moe and never for qwen2moe, so `norm_topk_prob` must match that;
  dense layers (`mlp_only_layers`, `decoder_sparse_step` > 1) do not exist in its graphs.
- Qwen2-MoE adds a shared expert of `shared_expert_intermediate_size` whose output is scaled
  by sigmoid(shared_expert_gate(x)); the gate is a [1, hidden] matrix, kept F32.
- llama.cpp's qwen2moe needs an output matrix: a tied checkpoint gets token_embd written again.
"""

from __future__ import annotations

import gguf

from llorch.convert.families import sparse
from llorch.convert.families.base import ModelInput, PlannedTensor, cfg_int, dims, expected_shapes
from llorch.convert.families.moe import Experts

_T = gguf.MODEL_TENSOR
_A = gguf.MODEL_ARCH
# llama.cpp's build_moe_ffn(norm_w=...) per arch
NORM_TOPK = {_A.QWEN2MOE: False, _A.QWEN3MOE: True}


def experts(model: ModelInput) -> Experts:
    d = dims(model)
    return Experts(
        n_layer=d.n_layer,
        n_expert=cfg_int(model, "num_experts", "num_local_experts"),
        n_embd=d.n_embd,
        n_ff=cfg_int(model, "moe_intermediate_size"),
    )


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    sparse.check_sparse_layers(model, NORM_TOPK[model.arch])
    ex = experts(model)
    sparse.write_hparams(model, w, ex.n_expert)
    w.add_expert_feed_forward_length(ex.n_ff)
    if model.arch == _A.QWEN2MOE:
        w.add_expert_shared_feed_forward_length(cfg_int(model, "shared_expert_intermediate_size"))


def plan(model: ModelInput) -> list[PlannedTensor]:
    d = dims(model)
    ex = experts(model)
    expected = expected_shapes(model, d)
    if model.arch == _A.QWEN3MOE:
        expected[_T.ATTN_Q_NORM] = (d.head_dim,)
        expected[_T.ATTN_K_NORM] = (d.head_dim,)
    else:
        n_shared = cfg_int(model, "shared_expert_intermediate_size")
        expected[_T.FFN_GATE_SHEXP] = (n_shared, d.n_embd)
        expected[_T.FFN_UP_SHEXP] = (n_shared, d.n_embd)
        expected[_T.FFN_DOWN_SHEXP] = (d.n_embd, n_shared)
        expected[_T.FFN_GATE_INP_SHEXP] = (1, d.n_embd)
    plans = sparse.plan(model, ex, expected)
    if model.arch == _A.QWEN2MOE:
        plans.extend(tied_output(model, plans))
    return plans


def tied_output(model: ModelInput, plans: list[PlannedTensor]) -> list[PlannedTensor]:
    """token_embd again as the output matrix, for a tied checkpoint of a graph that needs one."""
    if model.config.get("tie_word_embeddings") is not True:
        return []
    names = {p.name: p for p in plans}
    embd = names.get(gguf.TENSOR_NAMES[_T.TOKEN_EMBD] + ".weight")
    output = gguf.TENSOR_NAMES[_T.OUTPUT] + ".weight"
    if output in names or embd is None:
        return []
    return [PlannedTensor(output, embd.shape, embd.load, embd.sources)]
