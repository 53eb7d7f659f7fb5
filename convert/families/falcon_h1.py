"""Falcon-H1 (`FalconH1ForCausalLM`, llama.cpp arch `falcon-h1`): attention and a Mamba-2 mixer
side by side in every layer.

Facts from transformers' modeling_falcon_h1 / configuration_falcon_h1 and llama.cpp's
src/models/falcon-h1.cpp, src/models/mamba-base.cpp and conversion/falcon_h1.py:
- Each layer: one RMS norm (input_layernorm) feeds both the attention (Llama-style, NEOX RoPE:
  no Q/K permutation) and the Mamba-2 mixer; their outputs are summed into the residual; then
  pre_ff_layernorm and a SwiGLU MLP. The mixer's tensors are Mamba-2's (mamba2.transforms);
  its sizes come from the `mamba_*` keys (`mamba_d_ssm`, not expand x hidden_size).
- llama.cpp's graph reads none of the multipliers, so each is folded into the weight whose
  output it scales (linear, so exact): embedding_multiplier -> token_embd, lm_head_multiplier
  -> output, attention_in_multiplier -> q/k/v (key_multiplier also into k, before RoPE,
  which is linear), attention_out_multiplier -> attn_output, ssm_in_multiplier and the five
  `ssm_multipliers` (transformers' mup_vector over the rows [z, x, B, C, dt]) -> ssm_in,
  ssm_out_multiplier -> ssm_out, mlp_multipliers -> ffn_gate and ffn_down (and their biases).
- Tied embeddings: llama.cpp would reuse token_embd (already times embedding_multiplier) as
  the output, so the output is written as its own tensor, embed_tokens x lm_head_multiplier.
- `mamba_rms_norm` false: no ssm_norm tensor and llama.cpp gates without a norm, as
  transformers does. The graph always adds a conv1d bias: without one a zero bias is written.
"""

from __future__ import annotations

import gguf
import numpy as np

from llorch.convert.errors import ConfigError
from llorch.convert.families import mamba2, rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    Transform,
    cfg_float,
    cfg_int,
    constant_tensor,
    dims,
    expected_shapes,
    map_tensors,
    write_common,
)

_T = gguf.MODEL_TENSOR


def ssm(model: ModelInput) -> mamba2.Ssm:
    """The mixer's sizes; `mamba_d_head: "auto"` is d_ssm / n_heads as in FalconH1Config."""
    n_embd = cfg_int(model, "hidden_size")
    d_inner = model.config.get("mamba_d_ssm") or int(
        cfg_float(model, "mamba_expand", default=2.0) * n_embd
    )
    n_head = cfg_int(model, "mamba_n_heads")
    d_head = model.config.get("mamba_d_head")
    if isinstance(d_head, int) and d_head * n_head != d_inner:
        raise ConfigError(
            f"{model.folder / 'config.json'}: mamba_n_heads x mamba_d_head = {n_head * d_head} "
            f"is not mamba_d_ssm = {d_inner}"
        )
    return mamba2.Ssm(
        n_layer=cfg_int(model, "num_hidden_layers"),
        n_embd=n_embd,
        d_inner=int(d_inner),
        d_state=cfg_int(model, "mamba_d_state", default=256),
        n_group=cfg_int(model, "mamba_n_groups", default=1),
        n_head=n_head,
        d_conv=cfg_int(model, "mamba_d_conv", default=4),
    )


def _check(model: ModelInput) -> None:
    """Settings llama.cpp's falcon-h1 graph computes differently, refused by name."""
    cfg, where = model.config, model.folder / "config.json"
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act={cfg['hidden_act']!r}; llama.cpp: silu only")
    if cfg.get("attention_bias"):  # falcon-h1.cpp passes no bias to the output projection
        raise ConfigError(f"{where}: attention_bias=true (o_proj bias) is not applied by llama.cpp")
    if cfg.get("projectors_bias"):
        raise ConfigError(f"{where}: projectors_bias=true (mixer out_proj bias) is not supported")
    if cfg.get("mamba_proj_bias"):
        raise ConfigError(f"{where}: mamba_proj_bias=true (mixer in_proj bias) is not supported")
    if cfg.get("mamba_rms_norm") and cfg.get("mamba_norm_before_gate", True):
        # mamba-base.cpp gates (y * silu(z)) and then normalises
        raise ConfigError(
            f"{where}: mamba_norm_before_gate=true with mamba_rms_norm=true is not supported "
            "by llama.cpp (it gates before the norm)"
        )
    limit = [mamba2._number(x) for x in cfg.get("time_step_limit") or (0.0, float("inf"))]
    if limit != [0.0, float("inf")]:
        raise ConfigError(f"{where}: time_step_limit={limit} is not supported (llama.cpp: none)")


def _multipliers(model: ModelInput, key: str, n: int) -> list[float]:
    values = model.config.get(key) or [1.0] * n
    if len(values) != n:
        raise ConfigError(
            f"{model.folder / 'config.json'}: {key} has {len(values)} values, not {n}"
        )
    return [float(v) for v in values]


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    s = ssm(model)
    d = write_common(model, w)  # attention, FFN, RMS eps (also the mixer's norm eps), rope base
    w.add_rope_dimension_count(d.head_dim)
    rope.write_scaling(model, w)
    w.add_ssm_conv_kernel(s.d_conv)
    w.add_ssm_inner_size(s.d_inner)
    w.add_ssm_state_size(s.d_state)
    w.add_ssm_time_step_rank(s.n_head)  # llama.cpp: the mixer's head count
    w.add_ssm_group_count(s.n_group)


def _scaled(factor: float) -> Transform:
    return lambda name, x: x * np.float32(factor)


def transforms(model: ModelInput, s: mamba2.Ssm) -> dict[gguf.MODEL_TENSOR, Transform]:
    def m(key: str) -> float:
        return cfg_float(model, key, default=1.0)

    gate, down = _multipliers(model, "mlp_multipliers", 2)
    # transformers' compute_mup_vector: one factor per segment of in_proj's output rows
    gs = s.n_group * s.d_state
    sizes = (s.d_inner, s.d_inner, gs, gs, s.n_head)
    rows = np.repeat(np.asarray(_multipliers(model, "ssm_multipliers", 5), np.float32), sizes)
    rows *= np.float32(m("ssm_in_multiplier"))
    attn_in = m("attention_in_multiplier")
    return {
        **mamba2.transforms(s),
        _T.TOKEN_EMBD: _scaled(m("embedding_multiplier")),
        _T.OUTPUT: _scaled(m("lm_head_multiplier")),
        _T.ATTN_Q: _scaled(attn_in),
        _T.ATTN_K: _scaled(attn_in * m("key_multiplier")),
        _T.ATTN_V: _scaled(attn_in),
        _T.ATTN_OUT: _scaled(m("attention_out_multiplier")),
        _T.SSM_IN: lambda name, x: x * rows[:, None],
        _T.SSM_OUT: _scaled(m("ssm_out_multiplier")),
        _T.FFN_GATE: _scaled(gate),  # silu(m * (W x + b)): weight and bias alike
        _T.FFN_DOWN: _scaled(down),
    }


def _tied_output(model: ModelInput, embed: str) -> PlannedTensor:
    scale = np.float32(cfg_float(model, "lm_head_multiplier", default=1.0))

    def load() -> np.ndarray:
        return model.ckpt.load_f32(embed) * scale

    shape = model.ckpt.shape(embed)
    return PlannedTensor(gguf.TENSOR_NAMES[_T.OUTPUT] + ".weight", shape, load, (embed,))


def _zero_conv_biases(s: mamba2.Ssm, plans: list[PlannedTensor]) -> list[PlannedTensor]:
    have = {p.name for p in plans}
    conv = gguf.TENSOR_NAMES[_T.SSM_CONV1D]
    zeros = np.zeros(s.d_inner + 2 * s.n_group * s.d_state, np.float32)
    names = [conv.format(bid=i) + ".bias" for i in range(s.n_layer)]
    return [constant_tensor(n, zeros) for n in names if n not in have]


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    s = ssm(model)
    expected = {**expected_shapes(model, dims(model)), **mamba2.expected(model, s)}
    expected[_T.FFN_PRE_NORM] = (s.n_embd,)  # pre_ff_layernorm: llama.cpp's ffn_norm
    plans = map_tensors(
        model,
        transforms=transforms(model, s),
        expected=expected,
        keep_f32=mamba2.KEEP_F32,
        rename=mamba2.rename,
    )
    plans = mamba2.reshaped(plans, s)
    output = gguf.TENSOR_NAMES[_T.OUTPUT] + ".weight"
    if model.config.get("tie_word_embeddings") and all(p.name != output for p in plans):
        embed = gguf.TENSOR_NAMES[_T.TOKEN_EMBD] + ".weight"
        plans.append(_tied_output(model, next(p for p in plans if p.name == embed).sources[0]))
    return plans + _zero_conv_biases(s, plans)
