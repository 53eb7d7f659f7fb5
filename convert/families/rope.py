"""RoPE scaling (`rope_scaling` / `rope_parameters`) written the way llama.cpp reads it.

Every llama.cpp graph rotates through ggml_rope_ext with the context's frequency scale and
YaRN parameters, so `linear` and `yarn` work for any family; `llama3` (a rope_freqs tensor)
and `longrope` (short/long factor tensors) need per-architecture tensors and are written by
the families whose llama.cpp graph reads them (llama, phi3). `dynamic` (dynamic NTK) has no
llama.cpp implementation. A family passes the types it handles itself; anything else is
refused by name, never dropped.

YaRN, from transformers' _compute_yarn_parameters and llama.cpp's llama-context.cpp:
- the frequency blend is the same on both sides (ramp between the beta_fast/beta_slow
  correction dimensions over the rotated dimensions, floor/ceil as `truncate` true);
- transformers scales cos/sin by its attention factor A (given, or from factor, mscale and
  mscale_all_dim); llama.cpp scales them by get_mscale(factor) * rope.scaling.attn_factor
  when no yarn_log_multiplier is written, so A / get_mscale(factor) is written there, which
  reproduces every way transformers derives A.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import gguf
import numpy as np

from llorch.convert.errors import ConfigError
from llorch.convert.families.base import ModelInput, cfg_int, rope_params

# what ggml_rope_ext gives every family
GENERIC = ("default", "linear", "yarn")


def rope_type(model: ModelInput) -> str:
    kind = rope_params(model).get("rope_type") or "default"
    return "longrope" if kind == "su" else str(kind)  # "su": Phi-3's early name for LongRoPE


def check_type(model: ModelInput, own: Collection[str] = ()) -> str:
    """The config's RoPE scaling type, if this family can write it; else ConfigError."""
    kind = rope_type(model)
    allowed = (*GENERIC, *own)
    if kind in allowed:
        return kind
    why = " (dynamic NTK scaling is not implemented by llama.cpp)" if kind == "dynamic" else ""
    raise ConfigError(
        f"{model.folder / 'config.json'}: rope_type {kind!r} is not supported for "
        f"{model.hf_architecture}{why} (supported: {', '.join(allowed)})"
    )


def original_context(model: ModelInput, params: dict[str, Any]) -> int:
    """The pre-training context the scaling extends (transformers' default: the model's)."""
    orig = params.get("original_max_position_embeddings") or model.config.get(
        "original_max_position_embeddings"
    )
    return int(orig) if orig else cfg_int(model, "max_position_embeddings")


def _mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def write_scaling(model: ModelInput, w: gguf.GGUFWriter, own: Collection[str] = ()) -> str:
    """Write linear or YaRN scaling; return the type (a type in `own` is the caller's to
    write). Raises ConfigError for a type llama.cpp cannot run for this family."""
    kind = check_type(model, own)
    rp = rope_params(model)
    where = model.folder / "config.json"
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rp["factor"]))
    elif kind == "yarn":
        if rp.get("truncate") is False:
            raise ConfigError(f"{where}: YaRN with truncate=false is not supported by llama.cpp")
        betas = (float(rp.get("beta_fast") or 32.0), float(rp.get("beta_slow") or 1.0))
        if betas != (32.0, 1.0):
            # the GGUF keys exist, but only a few llama.cpp graphs (deepseek2, mistral3, grok)
            # read them; the others always use 32 and 1
            raise ConfigError(
                f"{where}: YaRN with beta_fast={betas[0]:g}, beta_slow={betas[1]:g} is not "
                f"supported for {model.hf_architecture} (llama.cpp uses 32 and 1 for it)"
            )
        orig = original_context(model, rp)
        factor = rp.get("factor") or cfg_int(model, "max_position_embeddings") / orig
        factor = float(factor)
        attention = rp.get("attention_factor")
        if attention is None:
            mscale, all_dim = rp.get("mscale"), rp.get("mscale_all_dim")
            if mscale and all_dim:
                attention = _mscale(factor, float(mscale)) / _mscale(factor, float(all_dim))
            else:
                attention = _mscale(factor)
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(orig)
        w.add_rope_scaling_yarn_beta_fast(betas[0])
        w.add_rope_scaling_yarn_beta_slow(betas[1])
        w.add_rope_scaling_attn_factors(float(attention) / _mscale(factor))
    return kind


def llama3_rope_factors(model: ModelInput, head_dim: int) -> np.ndarray | None:
    """Per-dimension frequency divisors for Llama 3.1+ `rope_type: llama3` scaling.

    Same formula as transformers' _compute_llama3_parameters; llama.cpp divides each rotary
    frequency by the matching entry of the `rope_freqs` tensor.
    """
    rp = rope_params(model)
    if rp.get("rope_type") != "llama3":
        return None
    base = float(rp.get("rope_theta", 10000.0))
    factor = float(rp.get("factor", 8.0))
    low = float(rp.get("low_freq_factor", 1.0))
    high = float(rp.get("high_freq_factor", 4.0))
    old_ctx = float(rp.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / (base ** (i / head_dim))
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def check_written(model: ModelInput, w: gguf.GGUFWriter, tensor_names: Collection[str]) -> None:
    """After a family wrote its hyperparameters and planned its tensors: a config with RoPE
    scaling must have left a trace llama.cpp reads (the scaling type, or llama3's rope_freqs
    tensor); a family that ignores it is an error here rather than a silently wrong model."""
    kind = rope_type(model)
    if kind == "default":
        return
    arch = gguf.MODEL_ARCH_NAMES[model.arch]
    written = gguf.Keys.Rope.SCALING_TYPE.format(arch=arch) in w.kv_data[0]
    freqs = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight" in tensor_names
    if not (written or (kind == "llama3" and freqs)):
        raise ConfigError(
            f"{model.folder / 'config.json'}: rope_type {kind!r} is not supported for "
            f"{model.hf_architecture} (its converter does not write RoPE scaling)"
        )
