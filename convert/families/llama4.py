"""Llama 4 text (`Llama4ForCausalLM`, llama.cpp arch `llama4`).

Facts from transformers' modeling_llama4 / configuration_llama4 and llama.cpp's
src/models/llama4.cpp and conversion/llama.py (Llama4Model):
- RoPE on adjacent pairs (transformers rotates complex numbers), as llama.cpp's: Q and K are
  not permuted; `rope_type: llama3` scaling as the rope_freqs tensor.
- Every `no_rope_layer_interval`-th layer (4) has no RoPE and full attention, the others
  chunked attention (`attention_chunk_size`) and, with `use_qk_norm`, a weightless L2 (RMS)
  norm on Q and K after RoPE. The no-RoPE layers scale Q by the attention temperature
  log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1. llama.cpp fixes the pattern (every
  4th layer), the chunk (8192), floor_scale (8192) and attn_scale (0.1), and applies the q/k
  norm unless the model has 128 experts (Maverick); other settings are refused by name.
- MoE layers (every `interleave_moe_layer_step`-th): sigmoid of the top-k router logits scales
  the expert *input* (llama.cpp's weight_before_ffn for this arch), plus an always-on shared
  expert of the experts' width (`intermediate_size`). Experts are stored transposed and fused:
  gate_up_proj [E, D, 2F] (gate columns first), down_proj [E, F, D]. Dense layers' MLPs are
  `intermediate_size_mlp` wide (llama.cpp's feed_forward_length).
- Llama4ForConditionalGeneration (as released, and as transformers 5 saves it) keeps this
  model as `language_model.model.*` / `language_model.lm_head.*` beside the vision part
  (convert/families/llama4_vision.py); its tensors are matched by their text-model names.
"""

from __future__ import annotations

import dataclasses
import re

import gguf

from llorch.convert.errors import ConfigError, MissingExpertError
from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_float,
    cfg_int,
    constant_tensor,
    dims,
    expected_shapes,
    map_tensors,
    write_common,
)
from llorch.convert.families.moe import transposed_stacker

_T = gguf.MODEL_TENSOR
EXPERTS = re.compile(r"model\.layers\.(\d+)\.feed_forward\.experts\.(gate_up_proj|down_proj)")
# llama.cpp's llama4 constants (load_arch_hparams)
FIXED = {"attention_chunk_size": 8192, "floor_scale": 8192, "attn_scale": 0.1}
NO_ROPE_STEP = 4


def _mlp_width(model: ModelInput) -> ModelInput:
    """The model as llama.cpp sizes it: feed_forward_length is the dense layers' MLP."""
    config = {**model.config, "intermediate_size": cfg_int(model, "intermediate_size_mlp")}
    return dataclasses.replace(model, config=config)


def _check(model: ModelInput) -> None:
    where = model.folder / "config.json"
    n_layer, n_expert = dims(model).n_layer, cfg_int(model, "num_local_experts")
    chunked = model.config.get("attention_chunk_size") is not None
    rope_layers = [int((i + 1) % NO_ROPE_STEP != 0) for i in range(n_layer)]
    if not chunked:  # llama.cpp: no chunked attention means RoPE on every layer
        rope_layers = [1] * n_layer
    if list(model.config.get("no_rope_layers") or rope_layers) != rope_layers:
        raise ConfigError(
            f"{where}: no_rope_layers={model.config['no_rope_layers']} is not supported "
            f"(llama.cpp's llama4 graph: {rope_layers})"
        )
    for key, value in FIXED.items():
        if chunked and cfg_float(model, key, default=value) != value:
            raise ConfigError(
                f"{where}: {key}={model.config[key]} is not supported (llama.cpp: {value})"
            )
    if chunked and model.config.get("attn_temperature_tuning") is False:
        raise ConfigError(f"{where}: attn_temperature_tuning=false is not supported by llama.cpp")
    if bool(model.config.get("use_qk_norm", True)) != (n_expert != 128):
        raise ConfigError(
            f"{where}: use_qk_norm={model.config.get('use_qk_norm')} with {n_expert} experts is "
            "not supported (llama.cpp normalises Q and K unless there are 128 experts)"
        )
    step = cfg_int(model, "interleave_moe_layer_step", default=1)
    moe_layers = model.config.get("moe_layers")
    if moe_layers is not None and list(moe_layers) != list(range(step - 1, n_layer, step)):
        raise ConfigError(
            f"{where}: moe_layers={moe_layers} is not supported (llama.cpp: every "
            f"interleave_moe_layer_step={step}th layer)"
        )


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    d = write_common(_mlp_width(model), w)
    w.add_rope_dimension_count(d.head_dim)
    rope.write_scaling(model, w, own=("llama3",))  # llama3: the rope_freqs tensor (plan)
    w.add_expert_count(cfg_int(model, "num_local_experts"))
    w.add_expert_used_count(cfg_int(model, "num_experts_per_tok"))
    w.add_expert_feed_forward_length(cfg_int(model, "intermediate_size"))
    w.add_interleave_moe_layer_step(cfg_int(model, "interleave_moe_layer_step", default=1))
    if model.config.get("attention_chunk_size") is None:
        w.add_sliding_window(0)


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    d = dims(_mlp_width(model))
    n_expert, n_ff_exp = cfg_int(model, "num_local_experts"), cfg_int(model, "intermediate_size")
    found = {
        (int(m[1]), m[2]): n
        for n in model.ckpt.names()
        if (text := model.text_name(n)) is not None and (m := EXPERTS.fullmatch(text))
    }
    stacked = []
    step = cfg_int(model, "interleave_moe_layer_step", default=1)
    for layer in range(step - 1, d.n_layer, step):
        for kind, proj, rows in (
            (_T.FFN_GATE_EXP, "gate_up_proj", slice(0, n_ff_exp)),
            (_T.FFN_UP_EXP, "gate_up_proj", slice(n_ff_exp, None)),
            (_T.FFN_DOWN_EXP, "down_proj", slice(None)),
        ):
            name = found.get((layer, proj))
            if name is None:
                raise MissingExpertError(f"{model.folder}: layer {layer} has no experts.{proj}")
            shape = (
                n_expert,
                *((d.n_embd, n_ff_exp) if proj == "down_proj" else (n_ff_exp, d.n_embd)),
            )
            load = transposed_stacker(model.ckpt, name, rows, shape)
            out = gguf.TENSOR_NAMES[kind].format(bid=layer) + ".weight"
            stacked.append(PlannedTensor(out, shape, load, (name,)))
    expected = expected_shapes(model, d)
    expected.update(
        {
            _T.FFN_GATE_INP: (n_expert, d.n_embd),
            _T.FFN_GATE_SHEXP: (n_ff_exp, d.n_embd),
            _T.FFN_UP_SHEXP: (n_ff_exp, d.n_embd),
            _T.FFN_DOWN_SHEXP: (d.n_embd, n_ff_exp),
        }
    )
    claimed = frozenset(p.sources[0] for p in stacked)
    plans = map_tensors(model, expected=expected, claimed=claimed) + stacked
    factors = rope.llama3_rope_factors(model, d.head_dim)
    if factors is not None:
        plans.append(constant_tensor(gguf.TENSOR_NAMES[_T.ROPE_FREQS] + ".weight", factors))
    return plans
