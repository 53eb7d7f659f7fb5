"""Ministral 3 and Mistral 3 text (`Ministral3ForCausalLM`, `Mistral3ForConditionalGeneration`;
llama.cpp arch `mistral3`).

Facts from transformers' modeling_ministral3 and llama.cpp's src/models/mistral3.cpp,
src/llama-context.cpp and its converter (Ministral3Model):
- The Llama block (Q/K permuted for llama.cpp's RoPE layout) with YaRN RoPE scaling: factor,
  original context, beta_fast/beta_slow, and `mscale_all_dim` as llama.cpp's yarn_log_mul.
  llama.cpp derives the attention factor as mscale(factor, 1) / mscale(factor, mscale_all_dim),
  so it assumes `mscale` 1 (as released); another `mscale` or an explicit `attention_factor`
  is refused.
- Llama 4 attention temperature: queries are scaled by
  1 + beta * log(1 + floor(position / original_max_position_embeddings)); beta
  (`llama_4_scaling_beta`) is written as attention.temperature_scale, and llama.cpp takes the
  original context as the floor scale.
- Mistral3ForConditionalGeneration (Ministral 3, Mistral Small 3.1/3.2 with vision): the
  language model only, as for Gemma 3 (the table's text_part); no mmproj.
"""

from __future__ import annotations

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families import llama
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_int,
    rope_params,
    write_common,
)


def _yarn(model: ModelInput) -> dict:
    where = model.folder / "config.json"
    rp = rope_params(model)
    kind = rp.get("rope_type", "default")
    if kind == "default":
        return {}
    if kind != "yarn":
        raise ConfigError(
            f"{where}: rope_type {kind!r} is not supported for {model.hf_architecture} "
            "(supported: yarn, default)"
        )
    if float(rp.get("mscale", 1.0)) != 1.0 or rp.get("attention_factor") is not None:
        raise ConfigError(
            f"{where}: YaRN with mscale != 1 or an explicit attention_factor is not supported "
            "(llama.cpp's mistral3 assumes mscale 1)"
        )
    if rp.get("truncate") is False:
        raise ConfigError(f"{where}: YaRN with truncate=false is not supported by llama.cpp")
    return rp


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    rp = _yarn(model)
    d = write_common(model, w)
    w.add_rope_dimension_count(d.head_dim)
    if not rp:
        return
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(float(rp["factor"]))
    orig = rp.get("original_max_position_embeddings")
    w.add_rope_scaling_orig_ctx_len(
        int(orig) if orig else cfg_int(model, "max_position_embeddings")
    )
    w.add_rope_scaling_yarn_beta_fast(float(rp.get("beta_fast", 32.0)))
    w.add_rope_scaling_yarn_beta_slow(float(rp.get("beta_slow", 1.0)))
    w.add_rope_scaling_yarn_log_mul(float(rp.get("mscale_all_dim", 0.0)))
    beta = rp.get("llama_4_scaling_beta")
    if beta:
        w.add_attn_temperature_scale(float(beta))


def plan(model: ModelInput) -> list[PlannedTensor]:
    _yarn(model)
    return llama.plan(model)
