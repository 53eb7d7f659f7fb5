"""GLM-4.5 / GLM-4.5-Air / GLM-4.6 (`Glm4MoeForCausalLM`, llama.cpp arch `glm4moe`).

Facts from transformers' modeling_glm4_moe and llama.cpp's src/models/glm4-moe.cpp and its
converter (Glm4MoeModel):
- Attention with q/k/v biases, optional per-head q/k RMS norms (`use_qk_norm`), RoPE on the
  first `partial_rotary_factor` (0.5) of each head with rotate-half pairs, which llama.cpp
  runs as NEOX for glm4moe: no Q/K permutation; the rotated dimension count is written.
- `post_attention_layernorm` is the pre-MLP norm (llama.cpp's attn_post_norm for this arch).
- The first `first_k_dense_replace` layers have a dense MLP, the others a sigmoid router with
  `e_score_correction_bias`, top-k of `n_routed_experts` (group-limited when `n_group` > 1),
  `routed_scaling_factor`, `norm_topk_prob`, and `n_shared_experts` always-on experts; the
  experts are stacked by convert/families/moe.py.
- The multi-token-prediction layer after num_hidden_layers is not converted.
"""

from __future__ import annotations

import gguf

from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_float,
    cfg_int,
    dims,
    expected_shapes,
    map_tensors,
    rotary_dims,
    write_common,
)
from llorch.convert.families.moe import Experts, claimed, expert_plans, trunk_rename

_T = gguf.MODEL_TENSOR


def _check(model: ModelInput) -> None:
    rope.check_type(model)  # linear or YaRN, written by write_hparams


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    d = write_common(model, w)
    w.add_rope_dimension_count(rotary_dims(model, d.head_dim))
    rope.write_scaling(model, w)  # YaRN over the rotated dimensions, as transformers
    w.add_expert_count(cfg_int(model, "n_routed_experts"))
    w.add_expert_used_count(cfg_int(model, "num_experts_per_tok"))
    w.add_expert_feed_forward_length(cfg_int(model, "moe_intermediate_size"))
    w.add_expert_shared_count(cfg_int(model, "n_shared_experts", default=0))
    w.add_leading_dense_block_count(cfg_int(model, "first_k_dense_replace", default=0))
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_expert_weights_scale(cfg_float(model, "routed_scaling_factor", default=1.0))
    w.add_expert_weights_norm(bool(model.config.get("norm_topk_prob", True)))
    if (model.config.get("n_group") or 1) > 1:
        w.add_expert_group_count(cfg_int(model, "n_group"))
        w.add_expert_group_used_count(cfg_int(model, "topk_group"))


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    d = dims(model)
    n_expert, moe_ff = cfg_int(model, "n_routed_experts"), cfg_int(model, "moe_intermediate_size")
    shared = cfg_int(model, "n_shared_experts", default=0) * moe_ff
    first_dense = cfg_int(model, "first_k_dense_replace", default=0)
    stacked = expert_plans(model, Experts(d.n_layer, n_expert, d.n_embd, moe_ff, first_dense))
    expected = expected_shapes(model, d)
    expected.update(
        {
            _T.ATTN_Q_NORM: (d.head_dim,),
            _T.ATTN_K_NORM: (d.head_dim,),
            _T.ATTN_POST_NORM: (d.n_embd,),
            _T.FFN_GATE_INP: (n_expert, d.n_embd),
            _T.FFN_GATE_SHEXP: (shared, d.n_embd),
            _T.FFN_UP_SHEXP: (shared, d.n_embd),
            _T.FFN_DOWN_SHEXP: (d.n_embd, shared),
        }
    )
    plans = map_tensors(
        model,
        expected=expected,
        keep_f32=frozenset({_T.FFN_GATE_INP, _T.FFN_EXP_PROBS_B}),
        claimed=claimed(stacked),
        rename=trunk_rename(d.n_layer),
    )
    return plans + stacked
