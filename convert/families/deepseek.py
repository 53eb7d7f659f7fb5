"""DeepSeek V2 and V3 (`DeepseekV2ForCausalLM`, `DeepseekV3ForCausalLM`; llama.cpp `deepseek2`).

Facts from transformers' modeling_deepseek_v2/_v3 and llama.cpp's src/models/deepseek2.cpp,
src/llama-context.cpp and its converter (DeepseekV2Model):
- Multi-head latent attention, which llama.cpp runs as multi-query attention over the
  compressed latent: head_count_kv 1, key length kv_lora_rank + qk_rope_head_dim, value length
  kv_lora_rank, and the per-head sizes as the *_mla lengths. `kv_b_proj` [heads x (nope + v),
  kv_lora] is split per head into attn_k_b (the nope rows, transposed: [heads, kv_lora, nope])
  and attn_v_b ([heads, v, kv_lora]). Queries come from `q_proj` (V2-Lite) or the low-rank
  `q_a_proj` -> `q_a_layernorm` -> `q_b_proj` (V2, V3).
- RoPE on the qk_rope_head_dim part only, with interleaved pairs (transformers' complex rotation
  in V2, `rope_interleave` in V3), which is llama.cpp's normal rope: no permutation.
- The first `first_k_dense_replace` layers have a dense MLP; the others route to
  `n_routed_experts` (softmax router in V2, sigmoid with the `e_score_correction_bias` in V3,
  group-limited to `topk_group` of `n_group` groups by the sum of each group's top two scores),
  scaled by `routed_scaling_factor`, renormalised when `norm_topk_prob`, plus
  `n_shared_experts` always-on experts (one MLP of n_shared x moe_intermediate_size).
- YaRN: factor, original context, betas, and 0.1 x mscale_all_dim as yarn_log_mul (llama.cpp's
  deepseek2 convention), from which llama.cpp derives the attention scale; it assumes
  `mscale` = `mscale_all_dim` (as released).
- Released V3 checkpoints carry a multi-token-prediction layer after num_hidden_layers;
  llama.cpp's deepseek2 does not use it, so it is not converted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import gguf
import numpy as np

from llorch.convert.errors import ConfigError
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_float,
    cfg_int,
    map_tensors,
    rope_params,
)
from llorch.convert.families.moe import Experts, claimed, expert_plans, trunk_rename

_T = gguf.MODEL_TENSOR
KV_B = re.compile(r"model\.layers\.(\d+)\.self_attn\.kv_b_proj\.weight")


def _is_v3(model: ModelInput) -> bool:
    return model.hf_architecture == "DeepseekV3ForCausalLM"


def _yarn(model: ModelInput) -> dict[str, Any]:
    where = model.folder / "config.json"
    rp = rope_params(model)
    kind = rp.get("rope_type", "default")
    if kind == "default":
        return {}
    if kind != "yarn":
        raise ConfigError(f"{where}: rope_type {kind!r} is not supported (default, yarn)")
    if float(rp.get("mscale", 1.0)) != float(rp.get("mscale_all_dim", 1.0)):
        raise ConfigError(
            f"{where}: YaRN with mscale != mscale_all_dim is not supported (llama.cpp's "
            "deepseek2 derives both from mscale_all_dim)"
        )
    return rp


def _check(model: ModelInput) -> None:
    where = model.folder / "config.json"
    if model.config.get("rope_interleave") is False:
        raise ConfigError(
            f"{where}: rope_interleave=false is not supported (llama.cpp interleaves)"
        )
    n_group = model.config.get("n_group") or 1
    limited = model.config.get("topk_method") == "group_limited_greedy"
    if not _is_v3(model) and limited and n_group > 1:
        raise ConfigError(
            f"{where}: topk_method group_limited_greedy (groups ranked by their best expert) "
            "is not supported: llama.cpp ranks groups by the sum of their top two"
        )
    if _is_v3(model) and model.config.get("topk_method", "noaux_tc") != "noaux_tc":
        raise ConfigError(f"{where}: topk_method {model.config['topk_method']!r} is not supported")
    n_layer = cfg_int(model, "num_hidden_layers")
    lite = n_layer in (26, 27) or (n_layer == 48 and model.n_vocab == 128256)
    if model.config.get("q_lora_rank") is None and not lite:
        raise ConfigError(
            f"{where}: q_lora_rank=null with {n_layer} layers is not supported: llama.cpp's "
            "deepseek2 knows queries without LoRA only by the layer counts of the released "
            "models (26 or 27 layers, or 48 with a 128256-token vocabulary)"
        )
    if model.config.get("attention_bias"):
        raise ConfigError(f"{where}: attention_bias=true is not supported by llama.cpp's deepseek2")
    _yarn(model)


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    c = model.config
    kv_lora, rope = cfg_int(model, "kv_lora_rank"), cfg_int(model, "qk_rope_head_dim")
    w.add_context_length(cfg_int(model, "max_position_embeddings"))
    w.add_embedding_length(cfg_int(model, "hidden_size"))
    w.add_block_count(cfg_int(model, "num_hidden_layers"))
    w.add_feed_forward_length(cfg_int(model, "intermediate_size"))
    w.add_head_count(cfg_int(model, "num_attention_heads"))
    w.add_head_count_kv(1)  # the latent is shared by every head
    w.add_layer_norm_rms_eps(cfg_float(model, "rms_norm_eps", default=1e-6))
    w.add_rope_freq_base(float(rope_params(model).get("rope_theta", 10000.0)))
    w.add_vocab_size(model.n_vocab)
    w.add_leading_dense_block_count(cfg_int(model, "first_k_dense_replace", default=0))
    if c.get("q_lora_rank") is not None:
        w.add_q_lora_rank(cfg_int(model, "q_lora_rank"))
    w.add_kv_lora_rank(kv_lora)
    w.add_key_length(kv_lora + rope)
    w.add_value_length(kv_lora)
    w.add_key_length_mla(cfg_int(model, "qk_nope_head_dim") + rope)
    w.add_value_length_mla(cfg_int(model, "v_head_dim"))
    w.add_rope_dimension_count(rope)
    w.add_expert_feed_forward_length(cfg_int(model, "moe_intermediate_size"))
    w.add_expert_count(cfg_int(model, "n_routed_experts"))
    w.add_expert_used_count(cfg_int(model, "num_experts_per_tok"))
    w.add_expert_shared_count(cfg_int(model, "n_shared_experts", default=0))
    w.add_expert_weights_scale(cfg_float(model, "routed_scaling_factor", default=1.0))
    if c.get("norm_topk_prob"):
        w.add_expert_weights_norm(True)
    gating = gguf.ExpertGatingFuncType
    w.add_expert_gating_func(gating.SIGMOID if _is_v3(model) else gating.SOFTMAX)
    if (c.get("n_group") or 1) > 1:
        w.add_expert_group_count(cfg_int(model, "n_group"))
        w.add_expert_group_used_count(cfg_int(model, "topk_group"))
    rp = _yarn(model)
    if rp:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rp["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(rp["original_max_position_embeddings"]))
        w.add_rope_scaling_yarn_beta_fast(float(rp.get("beta_fast", 32.0)))
        w.add_rope_scaling_yarn_beta_slow(float(rp.get("beta_slow", 1.0)))
        w.add_rope_scaling_yarn_log_mul(0.1 * float(rp.get("mscale_all_dim", 0.0)))


def _kv_b_split(model: ModelInput, name: str, part: str) -> Callable[[], np.ndarray]:
    n_head = cfg_int(model, "num_attention_heads")
    nope, v = cfg_int(model, "qk_nope_head_dim"), cfg_int(model, "v_head_dim")

    def load() -> np.ndarray:
        kv_b = model.ckpt.load_f32(name)
        per_head = kv_b.reshape(n_head, nope + v, kv_b.shape[-1])
        if part == "k":
            return np.ascontiguousarray(per_head[:, :nope, :].transpose(0, 2, 1))
        return np.ascontiguousarray(per_head[:, nope:, :])

    return load


def _mla_plans(model: ModelInput, n_layer: int) -> list[PlannedTensor]:
    n_head, kv_lora = cfg_int(model, "num_attention_heads"), cfg_int(model, "kv_lora_rank")
    nope, v = cfg_int(model, "qk_nope_head_dim"), cfg_int(model, "v_head_dim")
    plans = []
    for name in model.ckpt.names():
        m = KV_B.fullmatch(name)
        if m is None or int(m[1]) >= n_layer:
            continue
        want = (n_head * (nope + v), kv_lora)
        if model.ckpt.shape(name) != want:
            raise ConfigError(
                f"{model.ckpt.refs[name].file}: {name} has shape {list(model.ckpt.shape(name))}, "
                f"config.json implies {list(want)}"
            )
        bid = int(m[1])
        for kind, part, shape in (
            (_T.ATTN_K_B, "k", (n_head, kv_lora, nope)),
            (_T.ATTN_V_B, "v", (n_head, v, kv_lora)),
        ):
            out = gguf.TENSOR_NAMES[kind].format(bid=bid) + ".weight"
            plans.append(PlannedTensor(out, shape, _kv_b_split(model, name, part), (name,)))
    return plans


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    n_layer = cfg_int(model, "num_hidden_layers")
    n_embd, n_head = cfg_int(model, "hidden_size"), cfg_int(model, "num_attention_heads")
    rope, v = cfg_int(model, "qk_rope_head_dim"), cfg_int(model, "v_head_dim")
    q_dim = n_head * (cfg_int(model, "qk_nope_head_dim") + rope)
    kv_lora, n_ff = cfg_int(model, "kv_lora_rank"), cfg_int(model, "intermediate_size")
    n_expert, moe_ff = cfg_int(model, "n_routed_experts"), cfg_int(model, "moe_intermediate_size")
    shared = cfg_int(model, "n_shared_experts", default=0) * moe_ff
    expected = {
        _T.TOKEN_EMBD: (model.n_vocab, n_embd),
        _T.OUTPUT: (model.n_vocab, n_embd),
        _T.ATTN_Q: (q_dim, n_embd),
        _T.ATTN_KV_A_MQA: (kv_lora + rope, n_embd),
        _T.ATTN_KV_A_NORM: (kv_lora,),
        _T.ATTN_OUT: (n_embd, n_head * v),
        _T.FFN_GATE: (n_ff, n_embd),
        _T.FFN_UP: (n_ff, n_embd),
        _T.FFN_DOWN: (n_embd, n_ff),
        _T.FFN_GATE_INP: (n_expert, n_embd),
        _T.FFN_GATE_SHEXP: (shared, n_embd),
        _T.FFN_UP_SHEXP: (shared, n_embd),
        _T.FFN_DOWN_SHEXP: (n_embd, shared),
    }
    if model.config.get("q_lora_rank") is not None:
        q_lora = cfg_int(model, "q_lora_rank")
        expected.update({_T.ATTN_Q_A: (q_lora, n_embd), _T.ATTN_Q_B: (q_dim, q_lora)})
    first_dense = cfg_int(model, "first_k_dense_replace", default=0)
    stacked = expert_plans(model, Experts(n_layer, n_expert, n_embd, moe_ff, first=first_dense))
    mla = _mla_plans(model, n_layer)

    plans = map_tensors(
        model,
        expected=expected,
        keep_f32=frozenset({_T.FFN_GATE_INP, _T.FFN_EXP_PROBS_B}),
        claimed=claimed(stacked) | claimed(mla),
        rename=trunk_rename(n_layer),
    )
    return plans + mla + stacked
