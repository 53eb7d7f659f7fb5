"""Idefics3's and SmolVLM's vision part: a SigLIP-like tower and the connector (a pixel
shuffle of `scale_factor`, then `modality_projection`, one linear map without bias), as
llama.cpp's clip `idefics3` projector.

Facts from llama.cpp's converter (conversion/smolvlm.py `SmolVLMModel`, MmprojModel in
conversion/base.py) and mtmd (tools/mtmd/clip.cpp, models/siglip.cpp, mtmd-image.cpp):
- Tensor names: the checkpoints' `model.vision_model.*` and
  `model.connector.modality_projection.proj.weight` are names gguf's MMPROJ map knows
  (`v.*`, `mm.model.fc.weight`); the text model (`model.text_model.`, `lm_head.`) is not the
  projector's.
- Types: the patch and position embeddings (`.embeddings.`) stay F32; 1-D tensors F32; the
  rest F16 or F32 as the file.
- Keys beyond the shared ones: `clip.vision.projector.scale_factor` (always; config.json's
  top-level `scale_factor`, 2 by default), `clip.vision.preproc_image_size` (the processor's
  `size.longest_edge`, the vision `image_size` without one), GELU, the LayerNorm epsilon.
  mtmd resizes an image so that its longer side is that size, cuts it into tiles of
  `image_size` and adds the whole image resized to one tile (the overview).
- A config.json may leave vision keys out (SmolVLM2's lacks hidden_size, heads, FFN size):
  transformers' Idefics3VisionConfig / SmolVLMVisionConfig defaults fill them, as llama.cpp's
  converter does for three of them. One difference: where `layer_norm_eps` is missing,
  llama.cpp writes 1e-5 and this module the 1e-6 those configs (and so the reference) use.
"""

from __future__ import annotations

from typing import Any

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families.base import PlannedTensor, StoredTensor
from llorch.convert.projector import TowerShape, VisionInput, plan_tower, vision_int, write_tower

_T = gguf.MODEL_TENSOR

VISION_PREFIXES = ("model.vision_model.", "model.connector.")

# Idefics3VisionConfig's and SmolVLMVisionConfig's defaults (transformers), for keys a
# config.json leaves out
DEFAULTS = {
    "hidden_size": 1152,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
}
LAYER_NORM_EPS = 1e-6
SCALE_FACTOR = 2  # Idefics3Config / SmolVLMConfig default
MEAN_STD = [0.5, 0.5, 0.5]  # Idefics3ImageProcessor's defaults

KEEP_F32 = frozenset({_T.V_ENC_EMBD_PATCH, _T.V_ENC_EMBD_POS})
REQUIRED = (_T.V_ENC_EMBD_PATCH, _T.V_ENC_EMBD_POS, _T.V_MMPROJ_FC)


def _v(model: VisionInput, key: str) -> int:
    return vision_int(model, key, DEFAULTS[key])


def _scale_factor(model: VisionInput) -> int:
    value = model.config.get("scale_factor", SCALE_FACTOR)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{model.folder / 'config.json'}: scale_factor is not a positive integer")
    return value


def _longest_edge(model: VisionInput) -> int:
    size: Any = model.preprocessor.get("size")
    edge = size.get("longest_edge") if isinstance(size, dict) else None
    return edge if isinstance(edge, int) and edge > 0 else _v(model, "image_size")


def write_hparams(model: VisionInput, w: gguf.GGUFWriter) -> None:
    write_tower(
        w,
        model,
        gguf.VisionProjectorType.IDEFICS3,
        TowerShape.vit(lambda key: _v(model, key)),
        mean=MEAN_STD,
        std=MEAN_STD,
    )
    w.add_vision_attention_layernorm_eps(float(model.vision.get("layer_norm_eps", LAYER_NORM_EPS)))
    w.add_vision_projector_scale_factor(_scale_factor(model))
    w.add_vision_use_gelu(True)
    w.add_vision_preproc_image_size(_longest_edge(model))


def _expected(model: VisionInput) -> dict[_T, tuple[int, ...]]:
    hidden, patch = _v(model, "hidden_size"), _v(model, "patch_size")
    side = _v(model, "image_size") // patch
    scale = _scale_factor(model)
    if side % scale:
        raise ConfigError(
            f"{model.folder / 'config.json'}: {side} patches a side do not shuffle by "
            f"scale_factor {scale}"
        )
    return {
        _T.V_ENC_EMBD_PATCH: (hidden, _v(model, "num_channels"), patch, patch),
        _T.V_ENC_EMBD_POS: (side * side, hidden),
        _T.V_MMPROJ_FC: (model.n_embd_text, hidden * scale * scale),
    }


def _source_name(name: str) -> str | None:
    return name if name.startswith(VISION_PREFIXES) else None


def plan(model: VisionInput) -> list[PlannedTensor]:
    ckpt = model.ckpt

    def planned(source: str, name: str, kind: _T, shape: tuple[int, ...]) -> PlannedTensor:
        keep = kind in KEEP_F32 or len(shape) <= 1
        return PlannedTensor(name, shape, StoredTensor(ckpt, source), (source,), keep)

    n_block = _v(model, "num_hidden_layers")
    return plan_tower(model, "idefics3", n_block, _source_name, _expected(model), REQUIRED, planned)
