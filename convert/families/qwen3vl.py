"""Qwen3-VL's language model (llama.cpp arch `qwen3vl`): Qwen3's decoder (per-head q/k RMS norms,
no biases) whose rotary pairs are split into interleaved M-RoPE sections, and which takes
deepstack features: an image token's input row is its merged embedding followed by one row per
deepstack layer of the tower, the i-th added to decoder layer i's output.

Facts from transformers' modeling_qwen3_vl and llama.cpp's conversion/qwen3vl.py
(`Qwen3VLTextModel`: Qwen3Model plus the deepstack count), src/models/qwen3vl.cpp and
src/llama-hparams.cpp (`n_embd_inp`):
- The tensors are Qwen3's (released as `model.language_model.*` beside `model.visual.*`).
- `mrope_section` (time, height, width in rotary pairs; [24, 20, 20] for a head of 128) is
  written as `rope.dimension_sections`, padded to four; llama.cpp runs qwen3vl's rope as
  interleaved M-RoPE (IMROPE), transformers' `recomposition_frequencies`. A text token has the
  same position in every section: Qwen3's NEOX rope.
- `num_deepstack_layers` is the length of the vision config's `deepstack_visual_indexes`;
  llama.cpp's input width is then n_embd x (1 + that), which mtmd's projector output matches.
  llama.cpp adds feature i to layer i after the last layer's rows are cut to the outputs, a
  shape assertion when the last layer takes one (the released models feed 3 of 28 or more
  layers): a config with as many deepstack layers as text layers is refused.
"""

from __future__ import annotations

from typing import Any

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families import qwen2vl
from llorch.convert.families.base import ModelInput, PlannedTensor


def n_deepstack(model: ModelInput) -> int:
    vision: Any = model.config.get("vision_config") or {}
    indexes = vision.get("deepstack_visual_indexes", [])
    if not isinstance(indexes, list):
        raise ConfigError(
            f"{model.folder / 'config.json'}: vision_config.deepstack_visual_indexes is not a list"
        )
    n_layer = model.config.get("num_hidden_layers")
    if isinstance(n_layer, int) and len(indexes) >= n_layer:
        raise ConfigError(
            f"{model.folder / 'config.json'}: {len(indexes)} deepstack layers for a "
            f"{n_layer}-layer language model; llama.cpp's qwen3vl graph needs its last layer "
            "without one"
        )
    return len(indexes)


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    qwen2vl.write_hparams(model, w)
    w.add_num_deepstack_layers(n_deepstack(model))


def plan(model: ModelInput) -> list[PlannedTensor]:
    return qwen2vl.plan(model)
