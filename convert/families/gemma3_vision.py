"""Gemma 3's vision part: the SigLIP tower and Gemma 3's projector (average pool, RMSNorm, one
projection), as llama.cpp's clip `gemma3` projector.

Facts from llama.cpp's converter (conversion/gemma.py `Gemma3VisionModel` and MmprojModel in
conversion/base.py) and its clip graph (tools/mtmd/models/gemma3.cpp):
- Tensor names come from gguf's MMPROJ map, after the projector's `mm_input_projection_weight`
  (a bare parameter) is spelt `.weight`; SigLIP's pooling head (`vision_model.head.`, present
  when vision_use_head, as in tinygemma3) is not read by Gemma 3 and is left out.
- `mm_soft_emb_norm` is a Gemma RMSNorm, x * (1 + w): written as w + 1. SigLIP's own
  LayerNorms are standard and stay as they are.
- Types: the patch and position embeddings (`.embeddings.`) stay F32, and the input projection
  is F16 even in an F32 file (llama.cpp issue 13025); 1-D tensors F32; the rest F16 or F32.
- `clip.vision.projector.scale_factor` (the pool's side) is written only when it is not
  Gemma 3's 4 (896 px / 14 px patches = 64 per side, pooled to 16 per side: 256 tokens).
"""

from __future__ import annotations

import gguf
import numpy as np

from llorch.convert.families.base import PlannedTensor, StoredTensor
from llorch.convert.projector import TowerShape, VisionInput, plan_tower, vision_int, write_tower

_T = gguf.MODEL_TENSOR
_Q = gguf.GGMLQuantizationType

# checkpoint prefix -> the released checkpoints' prefix, which gguf's map knows (first match):
# the released files (transformers 4), and transformers 5's `vision_tower.` without
# `vision_model.` (the wrapper's other prefixes: llorch.detector.table.LLAVA_TEXT)
RENAMED = (
    ("vision_tower.vision_model.", "vision_tower.vision_model."),
    ("vision_tower.", "vision_tower.vision_model."),
    ("multi_modal_projector.", "multi_modal_projector."),
)
LEFT_OUT = ("vision_tower.vision_model.head.",)

# SiglipVisionConfig's defaults (transformers), for keys a config.json leaves out
SIGLIP = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 16,
}
# Gemma3ImageProcessor's defaults: mean = std = 0.5; 256 tokens an image
MEAN_STD = [0.5, 0.5, 0.5]
IMAGE_TOKENS = 256
DEFAULT_SCALE = 4

KEEP_F32 = frozenset({_T.V_ENC_EMBD_PATCH, _T.V_ENC_EMBD_POS})
ALWAYS_F16 = frozenset({_T.V_MM_INP_PROJ})
REQUIRED = (_T.V_ENC_EMBD_PATCH, _T.V_ENC_EMBD_POS, _T.V_MM_INP_PROJ, _T.V_MM_SOFT_EMB_NORM)


def _released_name(name: str) -> str | None:
    """The released checkpoints' name of a vision tensor; None for any other tensor, or one
    left out."""
    for prefix, released in RENAMED:
        if name.startswith(prefix):
            out = released + name.removeprefix(prefix)
            if out.startswith(LEFT_OUT):
                return None
            return out[: -len("_weight")] + ".weight" if out.endswith("_weight") else out
    return None


def _tokens(model: VisionInput) -> int:
    for value in (
        model.preprocessor.get("image_seq_length"),
        model.config.get("mm_tokens_per_image"),
    ):
        if isinstance(value, int) and value > 0:
            return value
    return IMAGE_TOKENS


def write_hparams(model: VisionInput, w: gguf.GGUFWriter) -> None:
    def v(key: str) -> int:
        return vision_int(model, key, SIGLIP[key])

    write_tower(
        w,
        model,
        gguf.VisionProjectorType.GEMMA3,
        TowerShape.vit(v),
        mean=MEAN_STD,
        std=MEAN_STD,
    )
    w.add_vision_attention_layernorm_eps(float(model.vision.get("layer_norm_eps", 1e-6)))
    w.add_vision_use_gelu(True)
    scale = (v("image_size") // v("patch_size")) // int(_tokens(model) ** 0.5)
    if scale > 0 and scale != DEFAULT_SCALE:
        w.add_vision_projector_scale_factor(scale)


def _expected(model: VisionInput) -> dict[_T, tuple[int, ...]]:
    hidden, patch = vision_int(model, "hidden_size", 768), vision_int(model, "patch_size", 16)
    side = vision_int(model, "image_size", 224) // patch
    return {
        _T.V_ENC_EMBD_PATCH: (hidden, vision_int(model, "num_channels", 3), patch, patch),
        _T.V_ENC_EMBD_POS: (side * side, hidden),
        _T.V_MM_INP_PROJ: (hidden, model.n_embd_text),
        _T.V_MM_SOFT_EMB_NORM: (hidden,),
    }


def plan(model: VisionInput) -> list[PlannedTensor]:
    def planned(source: str, name: str, kind: _T, shape: tuple[int, ...]) -> PlannedTensor:
        return _planned(model, source, name, kind, shape)

    n_block = vision_int(model, "num_hidden_layers", SIGLIP["num_hidden_layers"])
    return plan_tower(model, "gemma3", n_block, _released_name, _expected(model), REQUIRED, planned)


def _planned(
    model: VisionInput, source: str, name: str, kind: _T, shape: tuple[int, ...]
) -> PlannedTensor:
    ckpt = model.ckpt
    if kind == _T.V_MM_SOFT_EMB_NORM:  # Gemma's RMSNorm: x * (1 + w)
        return PlannedTensor(
            name, shape, lambda: ckpt.load_f32(source) + np.float32(1.0), (source,), True
        )
    if kind in ALWAYS_F16 and len(shape) > 1:
        # F16 whatever the file's type: given as F16 values, written as they are
        return PlannedTensor(
            name,
            shape,
            lambda: ckpt.load_f32(source).astype(np.float16),
            (source,),
            qtype=_Q.F16,
        )
    keep = kind in KEEP_F32 or len(shape) <= 1
    return PlannedTensor(name, shape, StoredTensor(ckpt, source), (source,), keep)
