"""Qwen3.5 and Qwen3.5-MoE (llama.cpp arches `qwen35`, `qwen35moe`): Gated DeltaNet hybrids.

Facts from transformers' modeling_qwen3_5 / modeling_qwen3_5_moe and llama.cpp's
src/models/qwen35.cpp, qwen35moe.cpp and conversion/qwen.py (Qwen3NextModel,
_LinearAttentionVReorderBase, _Qwen35MRopeMixin):
- `layer_types` interleaves linear-attention (Gated DeltaNet) layers with full attention, one
  full layer every `full_attention_interval`; llama.cpp rebuilds that pattern from the
  interval (gguf-py has no per-layer key), so another pattern is refused.
- Full attention: q_proj gives per head [query, gate] (output x sigmoid(gate)), per-head
  q/k norms, partial rotary (0.25 of head_dim) in interleaved MRoPE: for text, NEOX rope on
  the rotary dims; sections as given or transformers' default [11, 11, 10].
- DeltaNet: conv1d [C, 1, K] -> [C, K], A_log -> ssm_a = -exp(A_log), dt_bias -> ssm_dt
  bias, the gated norm (plain weight) -> ssm_norm. transformers serves consecutive value
  heads from one key head (repeat_interleave); ggml broadcasts tiled, so value heads are
  reordered [k][v/k] -> [v/k][k] wherever they appear (qkv's value rows, z, a, b, A_log,
  dt_bias, conv1d's value channels, out_proj's columns).
- Every other RMS norm is zero-centred in transformers (x * (1 + w)): written as w + 1.
- The MoE variant: every layer sparse, softmax top-k renormalised (llama.cpp always), a
  shared expert scaled by sigmoid(shared_expert_gate(x)); the router and that gate stay F32.
- Multimodal wrappers (`*ForConditionalGeneration`): the language model converts (the
  table's text_part: the vision tower, `model.visual.`, is left out). The
  multi-token-prediction head (`mtp.`, which transformers does not load either) is not
  converted.
"""

from __future__ import annotations

import copy
import dataclasses

import gguf
import numpy as np

from llorch.convert.errors import ConfigError
from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    Transform,
    cfg_float,
    cfg_int,
    dims,
    expected_shapes,
    map_tensors,
    rope_params,
)
from llorch.convert.families.moe import Experts, claimed, expert_plans

_T = gguf.MODEL_TENSOR
MROPE_DEFAULT = [11, 11, 10]  # transformers' Qwen3_5TextRotaryEmbedding
ZERO_CENTRED = (_T.ATTN_NORM, _T.ATTN_POST_NORM, _T.OUTPUT_NORM, _T.ATTN_Q_NORM, _T.ATTN_K_NORM)
# ggml's ssm_conv takes only an F32 kernel (conversion/base.py keeps it F32, as the routers)
F32 = frozenset({_T.FFN_GATE_INP, _T.FFN_GATE_INP_SHEXP, _T.SSM_CONV1D})
MTP = ("mtp.", "model.mtp.")


@dataclasses.dataclass(frozen=True)
class Linear:
    n_k: int  # key heads (ssm group count)
    n_v: int  # value heads (ssm time-step rank)
    head: int  # key and value head size (ssm state size)
    d_conv: int

    @property
    def conv_dim(self) -> int:
        return 2 * self.n_k * self.head + self.n_v * self.head


def linear(model: ModelInput) -> Linear:
    """The DeltaNet sizes, once the config is one llama.cpp's graph computes."""
    where = model.folder / "config.json"
    n_k, n_v = cfg_int(model, "linear_num_key_heads"), cfg_int(model, "linear_num_value_heads")
    k_dim, v_dim = cfg_int(model, "linear_key_head_dim"), cfg_int(model, "linear_value_head_dim")
    if k_dim != v_dim:  # llama.cpp sizes both from ssm.state_size
        raise ConfigError(f"{where}: linear_key_head_dim {k_dim} != linear_value_head_dim {v_dim}")
    if n_v % n_k:
        raise ConfigError(f"{where}: linear_num_value_heads {n_v} is not a multiple of {n_k}")
    if model.config.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act={model.config['hidden_act']!r} (llama.cpp: silu)")
    if model.config.get("attention_bias"):
        raise ConfigError(f"{where}: attention_bias=true is not supported by llama.cpp's graph")
    return Linear(n_k, n_v, k_dim, cfg_int(model, "linear_conv_kernel_dim", default=4))


def interval(model: ModelInput) -> int:
    """The full-attention interval, checked against `layer_types` (transformers' default
    pattern: layer i is full attention when (i + 1) % interval == 0)."""
    types = model.config.get("layer_types")
    every = cfg_int(model, "full_attention_interval", default=4)
    if isinstance(types, list) and "full_attention" in types:
        every = types.index("full_attention") + 1
    n_layer = cfg_int(model, "num_hidden_layers")
    want = [("linear" if (i + 1) % every else "full") + "_attention" for i in range(n_layer)]
    if isinstance(types, list) and types != want:
        raise ConfigError(
            f"{model.folder / 'config.json'}: layer_types {types} is not one full-attention "
            f"layer every {every} (llama.cpp rebuilds the pattern from full_attention_interval)"
        )
    return every


def is_moe(model: ModelInput) -> bool:
    return model.arch == gguf.MODEL_ARCH.QWEN35MOE


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    d, lin = dims(model), linear(model)
    w.add_context_length(cfg_int(model, "max_position_embeddings"))
    w.add_embedding_length(d.n_embd)
    w.add_block_count(d.n_layer)
    if not is_moe(model):  # llama.cpp's converter writes it only when config.json has it
        w.add_feed_forward_length(d.n_ff)
    w.add_head_count(d.n_head)
    w.add_head_count_kv(d.n_head_kv)
    w.add_key_length(d.head_dim)
    w.add_value_length(d.head_dim)
    w.add_vocab_size(model.n_vocab)
    w.add_layer_norm_rms_eps(cfg_float(model, "rms_norm_eps"))
    w.add_rope_freq_base(float(rope_params(model).get("rope_theta", 10000.0)))
    w.add_rope_dimension_count(n_rot(model, d.head_dim))
    w.add_rope_dimension_sections(mrope_sections(model, d.head_dim))
    rope.write_scaling(model, w)
    w.add_ssm_conv_kernel(lin.d_conv)
    w.add_ssm_state_size(lin.head)
    w.add_ssm_group_count(lin.n_k)
    w.add_ssm_time_step_rank(lin.n_v)
    w.add_ssm_inner_size(lin.head * lin.n_v)
    w.add_full_attention_interval(interval(model))
    if is_moe(model):
        w.add_expert_count(cfg_int(model, "num_experts"))
        w.add_expert_used_count(cfg_int(model, "num_experts_per_tok"))
        w.add_expert_feed_forward_length(cfg_int(model, "moe_intermediate_size"))
        w.add_expert_shared_feed_forward_length(cfg_int(model, "shared_expert_intermediate_size"))


def n_rot(model: ModelInput, head_dim: int) -> int:
    """Rotated dims per head; absent, the factor is 0.25 (transformers' Qwen3_5TextConfig
    and llama.cpp's Qwen3NextModel default)."""
    top = model.config.get("partial_rotary_factor", 0.25)
    return int(head_dim * float(rope_params(model).get("partial_rotary_factor", top)))


def mrope_sections(model: ModelInput, head_dim: int) -> list[int]:
    """The MRoPE sections, if llama.cpp's interleaved MRoPE (ggml's ggml_mrope_cache_init)
    rotates every rotary pair of a text token by its position: it asserts that the sections
    fit the head, and a pair outside the sections would use the 4th position, 0 for text."""
    sections = [int(s) for s in rope_params(model).get("mrope_section") or MROPE_DEFAULT]
    sections = (sections + [0] * 4)[:4]
    total, n_pair = sum(sections), n_rot(model, head_dim) // 2
    # pair p is in sector p % total, which uses section sector % 3 while sector < 3 x that one
    fits = 0 < total <= head_dim
    if not fits or any(p % total >= 3 * sections[p % total % 3] for p in range(n_pair)):
        raise ConfigError(
            f"{model.folder / 'config.json'}: mrope_section {sections[:3]} does not cover the "
            f"{n_pair} rotary pairs of head_dim {head_dim} in llama.cpp's interleaved MRoPE"
        )
    return sections


def tiled(x: np.ndarray, axis: int, lin: Linear, head: int) -> np.ndarray:
    """Value heads along `axis` from transformers' grouped order (key head, then the value
    heads it serves) to ggml's tiled order (as conversion/qwen.py's _reorder_v_heads)."""
    shape = x.shape
    per_k = lin.n_v // lin.n_k
    grouped = x.reshape(*shape[:axis], lin.n_k, per_k, head, *shape[axis + 1 :])
    return np.ascontiguousarray(np.swapaxes(grouped, axis, axis + 1)).reshape(shape)


def transforms(lin: Linear) -> dict[_T, Transform]:
    qk = 2 * lin.n_k * lin.head  # query and key rows/channels come first, then values

    def values_after_qk(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x[:qk], tiled(x[qk:], 0, lin, lin.head)])

    def per_head(name: str, x: np.ndarray) -> np.ndarray:
        return tiled(x, 0, lin, 1)

    out: dict[_T, Transform] = dict.fromkeys(ZERO_CENTRED, lambda name, x: x + np.float32(1))
    out.update(
        {
            _T.ATTN_QKV: lambda name, x: values_after_qk(x),
            _T.SSM_CONV1D: lambda name, x: values_after_qk(x.reshape(x.shape[0], -1)),
            _T.ATTN_GATE: lambda name, x: tiled(x, 0, lin, lin.head),
            _T.SSM_OUT: lambda name, x: tiled(x, 1, lin, lin.head),
            _T.SSM_ALPHA: per_head,
            _T.SSM_BETA: per_head,
            _T.SSM_DT: per_head,
            _T.SSM_A: lambda name, x: -np.exp(tiled(x, 0, lin, 1)),
        }
    )
    return out


def expected(model: ModelInput, lin: Linear) -> dict[_T, tuple[int, ...]]:
    d = dims(model)
    v = lin.n_v * lin.head
    shapes = expected_shapes(model, d)  # MoE: no dense MLP, the experts are checked apart
    shapes.update(
        {
            _T.ATTN_Q: (2 * d.n_head * d.head_dim, d.n_embd),  # query and gate
            _T.ATTN_Q_NORM: (d.head_dim,),
            _T.ATTN_K_NORM: (d.head_dim,),
            _T.ATTN_QKV: (lin.conv_dim, d.n_embd),
            _T.ATTN_GATE: (v, d.n_embd),
            _T.SSM_ALPHA: (lin.n_v, d.n_embd),
            _T.SSM_BETA: (lin.n_v, d.n_embd),
            _T.SSM_A: (lin.n_v,),
            _T.SSM_DT: (lin.n_v,),
            _T.SSM_CONV1D: (lin.conv_dim, 1, lin.d_conv),
            _T.SSM_NORM: (lin.head,),
            _T.SSM_OUT: (d.n_embd, v),
        }
    )
    if is_moe(model):
        shexp = cfg_int(model, "shared_expert_intermediate_size")
        shapes[_T.FFN_GATE_INP] = (cfg_int(model, "num_experts"), d.n_embd)
        shapes[_T.FFN_GATE_INP_SHEXP] = (1, d.n_embd)
        shapes[_T.FFN_GATE_SHEXP] = shapes[_T.FFN_UP_SHEXP] = (shexp, d.n_embd)
        shapes[_T.FFN_DOWN_SHEXP] = (d.n_embd, shexp)
    return shapes


def rename(name: str) -> str:
    if name.endswith(".dt_bias"):  # the bias of llama.cpp's (absent) dt projection
        return name.removesuffix(".dt_bias") + ".dt_proj.bias"
    return name


def trunk(model: ModelInput) -> ModelInput:
    """The model without the MTP head: its tensors are neither mapped nor taken for experts
    (the MTP layer's experts are named like layer 0's)."""
    ckpt = copy.copy(model.ckpt)
    ckpt.refs = {k: ref for k, ref in model.ckpt.refs.items() if not k.startswith(MTP)}
    return dataclasses.replace(model, ckpt=ckpt)


def plan(model: ModelInput) -> list[PlannedTensor]:
    lin = linear(model)
    interval(model)
    model = trunk(model)
    stacked: list[PlannedTensor] = []
    if is_moe(model):
        d = dims(model)
        n_expert, n_ff = cfg_int(model, "num_experts"), cfg_int(model, "moe_intermediate_size")
        stacked = expert_plans(model, Experts(d.n_layer, n_expert, d.n_embd, n_ff))
    plans = map_tensors(
        model,
        transforms=transforms(lin),
        expected=expected(model, lin),
        keep_f32=F32,
        claimed=claimed(stacked),
        rename=rename,
    )
    conv = gguf.TENSOR_NAMES[_T.SSM_CONV1D].removeprefix("blk.{bid}") + ".weight"
    for i, p in enumerate(plans):  # conv1d's planned shape: the transform drops an axis
        if p.name.endswith(conv):
            plans[i] = dataclasses.replace(p, shape=(lin.conv_dim, lin.d_conv))
    return plans + stacked
