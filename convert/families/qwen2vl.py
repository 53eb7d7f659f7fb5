"""Qwen2-VL and Qwen2.5-VL's language model (llama.cpp arch `qwen2vl`): Qwen2's decoder (q/k/v
biases, rotate-half RoPE) whose rotary pairs are split into M-RoPE sections.

Facts from transformers' modeling_qwen2_5_vl and llama.cpp's conversion/qwenvl.py
(`Qwen2VLModel`), src/models/qwen2vl.cpp and ggml's ggml_rope_multi:
- The tensors are Qwen2's (the released checkpoints keep them as `model.layers.*` beside
  `visual.*`; transformers 5 models may name them `model.language_model.*`).
- `mrope_section` (three sizes in rotary pairs: time, height, width; e.g. [16, 24, 24] for a
  head of 128) is written as `rope.dimension_sections`, padded to four. A text token has the
  same position in every section, which is Qwen2's NEOX rope; an image's tokens get 2-D
  positions from mtmd.
- Older configs spell the rope type `mrope` (transformers 4 reads it as `default`).
"""

from __future__ import annotations

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families import qwen, rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    dims,
    rope_params,
    write_common,
)

OWN_ROPE = ("mrope",)  # nothing to write beyond the sections


def mrope_sections(model: ModelInput) -> list[int]:
    """The sections, checked to cover the rotary pairs of a head (ggml asserts it)."""
    raw = rope_params(model).get("mrope_section")
    head_dim = dims(model).head_dim
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{model.folder / 'config.json'}: no mrope_section in the rope settings")
    sections = ([int(s) for s in raw] + [0] * 4)[:4]
    if sum(sections) != head_dim // 2:
        raise ConfigError(
            f"{model.folder / 'config.json'}: mrope_section {sections[:3]} does not add up to "
            f"the {head_dim // 2} rotary pairs of head_dim {head_dim}"
        )
    return sections


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    write_common(model, w)
    rope.write_scaling(model, w, own=OWN_ROPE)
    w.add_rope_dimension_sections(mrope_sections(model))


def plan(model: ModelInput) -> list[PlannedTensor]:
    return qwen.plan(model)
