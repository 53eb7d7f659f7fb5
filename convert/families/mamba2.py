"""Mamba-2 (`Mamba2ForCausalLM`, llama.cpp arch `mamba2`): a state-space model, no attention.

Facts from transformers' modeling_mamba2 / configuration_mamba2 and llama.cpp's
src/models/mamba2.cpp and conversion/mamba.py (Mamba2Model):
- Each layer: RMS norm, `in_proj` to [z (gate), xBC, dt], a causal depthwise conv over xBC
  (`conv1d` [C, 1, K] -> [C, K]), the selective scan with per-head `A = -exp(A_log)`, `D` and
  `dt_bias` (llama.cpp's ssm_dt bias), a gated RMS norm over each of the `n_groups` groups
  (z * silu first: transformers' norm_before_gate false; weight [G, d_inner / G]) and
  `out_proj`. A and D are [H, 1] in llama.cpp.
- llama.cpp's graph has no in/out projection biases and no time-step clamp; configs that use
  them are refused. Embeddings are tied unless `lm_head` is stored.
"""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np

from llorch.convert.errors import ConfigError
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    Transform,
    cfg_float,
    cfg_int,
    map_tensors,
)

_T = gguf.MODEL_TENSOR


@dataclasses.dataclass(frozen=True)
class Ssm:
    n_layer: int
    n_embd: int
    d_inner: int
    d_state: int
    n_group: int
    n_head: int
    d_conv: int


def ssm(model: ModelInput) -> Ssm:
    n_embd = cfg_int(model, "hidden_size", "d_model")
    n_head = cfg_int(model, "num_heads")
    d_inner = n_head * cfg_int(model, "head_dim", default=64)
    expand = cfg_float(model, "expand", default=2.0)
    if d_inner != int(expand * n_embd):
        raise ConfigError(
            f"{model.folder / 'config.json'}: num_heads x head_dim = {d_inner} is not expand x "
            f"hidden_size = {int(expand * n_embd)}"
        )
    return Ssm(
        n_layer=cfg_int(model, "num_hidden_layers", "n_layer"),
        n_embd=n_embd,
        d_inner=d_inner,
        d_state=cfg_int(model, "state_size", default=128),
        n_group=cfg_int(model, "n_groups", default=1),
        n_head=n_head,
        d_conv=cfg_int(model, "conv_kernel", default=4),
    )


def _check(model: ModelInput) -> None:
    where = model.folder / "config.json"
    if model.config.get("use_bias"):
        raise ConfigError(f"{where}: use_bias=true (in/out projection biases) is not supported")
    if model.config.get("norm_before_gate"):
        raise ConfigError(f"{where}: norm_before_gate=true is not supported by llama.cpp")
    if model.config.get("rms_norm") is False:
        raise ConfigError(f"{where}: rms_norm=false (ungated output) is not supported")
    limit = [_number(x) for x in model.config.get("time_step_limit") or (0.0, float("inf"))]
    if limit != [0.0, float("inf")]:
        raise ConfigError(f"{where}: time_step_limit={limit} is not supported (llama.cpp: none)")


def _number(value: object) -> float:
    """A config number; transformers 5 writes infinities as {"__float__": "Infinity"}."""
    if isinstance(value, dict):
        value = value.get("__float__")
    return float(value)  # type: ignore[arg-type]


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    s = ssm(model)
    w.add_context_length(cfg_int(model, "max_position_embeddings", default=2**20))
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(0)  # llama.cpp reads both; no MLP, no attention
    w.add_head_count(0)
    w.add_block_count(s.n_layer)
    w.add_vocab_size(model.n_vocab)
    w.add_ssm_conv_kernel(s.d_conv)
    w.add_ssm_inner_size(s.d_inner)
    w.add_ssm_state_size(s.d_state)
    w.add_ssm_time_step_rank(s.n_head)
    w.add_ssm_group_count(s.n_group)
    w.add_layer_norm_rms_eps(cfg_float(model, "layer_norm_epsilon", "rms_norm_eps", default=1e-5))


# The conv kernel, A, D and the grouped norm stay F32 at any outtype, as in llama.cpp's
# converter: ggml_ssm_conv and ggml_ssm_scan take F32 only, and A/D ([H, 1]) are never quantized.
KEEP_F32 = frozenset({_T.SSM_CONV1D, _T.SSM_A, _T.SSM_D, _T.SSM_NORM})


def transforms(s: Ssm) -> dict[gguf.MODEL_TENSOR, Transform]:
    """The mixer tensors as llama.cpp's Mamba-2 graph takes them (also Falcon-H1's)."""
    return {
        _T.SSM_CONV1D: lambda name, x: x.reshape(x.shape[0], -1) if x.ndim == 3 else x,
        _T.SSM_A: lambda name, x: (-np.exp(x)).reshape(-1, 1),
        _T.SSM_D: lambda name, x: x.reshape(-1, 1),
        _T.SSM_NORM: lambda name, x: x.reshape(s.n_group, -1),
    }


def expected(model: ModelInput, s: Ssm) -> dict[gguf.MODEL_TENSOR, tuple[int, ...]]:
    conv = s.d_inner + 2 * s.n_group * s.d_state
    return {
        _T.TOKEN_EMBD: (model.n_vocab, s.n_embd),
        _T.OUTPUT: (model.n_vocab, s.n_embd),
        _T.SSM_IN: (s.d_inner + conv + s.n_head, s.n_embd),
        _T.SSM_CONV1D: (conv, 1, s.d_conv),
        _T.SSM_A: (s.n_head,),
        _T.SSM_D: (s.n_head,),
        _T.SSM_DT: (s.n_head,),
        _T.SSM_NORM: (s.d_inner,),
        _T.SSM_OUT: (s.n_embd, s.d_inner),
    }


def rename(name: str) -> str | None:
    """`dt_bias` is the bias of llama.cpp's (absent) dt projection."""
    return name.removesuffix(".dt_bias") + ".dt_proj.bias" if name.endswith(".dt_bias") else name


def reshaped(plans: list[PlannedTensor], s: Ssm) -> list[PlannedTensor]:
    """The planned shapes after the transforms (weights only; conv1d's bias keeps its own)."""
    shapes = {
        _T.SSM_CONV1D: (s.d_inner + 2 * s.n_group * s.d_state, s.d_conv),
        _T.SSM_A: (s.n_head, 1),
        _T.SSM_D: (s.n_head, 1),
        _T.SSM_NORM: (s.n_group, s.d_inner // s.n_group),
    }
    by_base = {gguf.TENSOR_NAMES[k].split(".")[-1]: shape for k, shape in shapes.items()}
    out = []
    for p in plans:  # blk.N.ssm_conv1d.weight, blk.N.ssm_a
        parts = p.name.split(".")
        shape = by_base.get(parts[2]) if len(parts) > 2 and parts[3:] in ([], ["weight"]) else None
        out.append(dataclasses.replace(p, shape=shape) if shape else p)
    return out


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    s = ssm(model)
    plans = map_tensors(
        model,
        transforms=transforms(s),
        expected=expected(model, s),
        keep_f32=KEEP_F32,
        rename=rename,
    )
    return reshaped(plans, s)
