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

from llorch.convert.errors import ConfigError
from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_int,
    dims,
    expected_shapes,
    map_tensors,
    write_common,
)
from llorch.convert.families.moe import Experts, claimed, expert_plans

_T = gguf.MODEL_TENSOR
_A = gguf.MODEL_ARCH
# llama.cpp's build_moe_ffn(norm_w=...) per arch
NORM_TOPK = {_A.QWEN2MOE: False, _A.QWEN3MOE: True}
ROUTER_F32 = frozenset({_T.FFN_GATE_INP, _T.FFN_GATE_INP_SHEXP})


def experts(model: ModelInput) -> Experts:
    d = dims(model)
    return Experts(
        n_layer=d.n_layer,
        n_expert=cfg_int(model, "num_experts", "num_local_experts"),
        n_embd=d.n_embd,
        n_ff=cfg_int(model, "moe_intermediate_size"),
    )


def check_sparse_layers(model: ModelInput, norm_topk: bool) -> None:
    """Refuse what llama.cpp's MoE graphs do not compute: the other top-k normalisation,
    dense layers between sparse ones, sliding-window attention, RoPE scaling other than linear
    and YaRN."""
    where = model.folder / "config.json"
    # absent: transformers' default, False (released Qwen3-MoE configs say true)
    if bool(model.config.get("norm_topk_prob", False)) != norm_topk:
        raise ConfigError(
            f"{where}: norm_topk_prob={not norm_topk} is not supported: llama.cpp's "
            f"{gguf.MODEL_ARCH_NAMES[model.arch]} graph "
            f"{'always' if norm_topk else 'never'} renormalises the top-k expert weights"
        )
    if model.config.get("mlp_only_layers") or cfg_int(model, "decoder_sparse_step", default=1) != 1:
        raise ConfigError(
            f"{where}: dense layers (mlp_only_layers / decoder_sparse_step) are not supported "
            f"by llama.cpp's {gguf.MODEL_ARCH_NAMES[model.arch]} graph (every layer is sparse)"
        )
    if model.config.get("use_sliding_window"):
        raise ConfigError(f"{where}: use_sliding_window=true is not supported by llama.cpp")
    rope.check_type(model)  # linear or YaRN, written by write_hparams


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    check_sparse_layers(model, NORM_TOPK[model.arch])
    write_common(model, w)
    rope.write_scaling(model, w)
    ex = experts(model)
    w.add_expert_count(ex.n_expert)
    w.add_expert_used_count(cfg_int(model, "num_experts_per_tok"))
    w.add_expert_feed_forward_length(ex.n_ff)
    if model.arch == _A.QWEN2MOE:
        w.add_expert_shared_feed_forward_length(cfg_int(model, "shared_expert_intermediate_size"))


def plan(model: ModelInput) -> list[PlannedTensor]:
    d = dims(model)
    ex = experts(model)
    expected = expected_shapes(model, d)
    expected[_T.FFN_GATE_INP] = (ex.n_expert, d.n_embd)
    if model.arch == _A.QWEN3MOE:
        expected[_T.ATTN_Q_NORM] = (d.head_dim,)
        expected[_T.ATTN_K_NORM] = (d.head_dim,)
    else:
        n_shared = cfg_int(model, "shared_expert_intermediate_size")
        expected[_T.FFN_GATE_SHEXP] = (n_shared, d.n_embd)
        expected[_T.FFN_UP_SHEXP] = (n_shared, d.n_embd)
        expected[_T.FFN_DOWN_SHEXP] = (d.n_embd, n_shared)
        expected[_T.FFN_GATE_INP_SHEXP] = (1, d.n_embd)
    stacked = expert_plans(model, ex)
    plans = map_tensors(model, expected=expected, keep_f32=ROUTER_F32, claimed=claimed(stacked))
    if model.arch == _A.QWEN2MOE:
        plans.extend(tied_output(model, plans))
    return plans + stacked


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
