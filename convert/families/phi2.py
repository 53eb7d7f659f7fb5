"""Phi-1/1.5/2 (`PhiForCausalLM`, llama.cpp arch `phi2`).

Facts from transformers' modeling_phi and llama.cpp's src/models/phi2.cpp: one LayerNorm per
block feeding attention and MLP in parallel; biases on every projection and on lm_head;
GELU (tanh) MLP fc1/fc2; rotate-half RoPE over `partial_rotary_factor` of each head, which
llama.cpp runs as NEOX rope over rope_dimension_count dimensions, so no permutation.
StableLM (stablelm.py) is written the same way, plus its parallel-residual flag.
"""

from __future__ import annotations

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    dims,
    expected_shapes,
    map_tensors,
    rotary_dims,
    write_common,
)


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    if model.config.get("qk_layernorm"):
        raise ConfigError(
            f"{model.folder / 'config.json'}: qk_layernorm=true is not supported for "
            "PhiForCausalLM (llama.cpp's phi2 graph has no per-head Q/K norms)"
        )
    write_layernorm_partial_rope(model, w)


def write_layernorm_partial_rope(model: ModelInput, w: gguf.GGUFWriter) -> None:
    """LayerNorm blocks with NEOX RoPE over the rotated part of each head, scaled as
    configured."""
    d = write_common(model, w, rms=False)
    w.add_rope_dimension_count(rotary_dims(model, d.head_dim))
    rope.write_scaling(model, w)


def plan(model: ModelInput) -> list[PlannedTensor]:
    return map_tensors(model, expected=expected_shapes(model, dims(model)))
