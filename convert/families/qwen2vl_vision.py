"""Qwen2-VL's vision part: the ViT (a Conv3D patch embedding over two frames, 2-D RoPE,
LayerNorm, a quick-GELU MLP of `mlp_ratio` x `embed_dim`, every layer attending to the whole
image) and the patch merger (LayerNorm, 2 x 2 patches concatenated, two linear maps with GELU
between), as llama.cpp's clip `qwen2vl_merger` projector.

Facts from llama.cpp's converter (conversion/qwenvl.py `Qwen2VLVisionModel`, MmprojModel in
conversion/base.py) and mtmd (tools/mtmd/clip.cpp, models/qwen2vl.cpp):
- Tensors as Qwen2.5-VL's (convert/families/qwen25vl_vision.py `plan_split`): gguf's MMPROJ
  map, the fused qkv split into q, k and v, the Conv3D patch embedding as two Conv2D kernels.
  The MLP is `fc1` / `fc2` (`ffn_up` / `ffn_down`), without a gate.
- The config's names differ from Qwen2.5-VL's: `embed_dim` is the tower's width and
  `hidden_size` the merger's output (the text model's width). llama.cpp's converter writes
  that `hidden_size` as the feed-forward length; llorch writes the MLP's real width,
  `mlp_ratio` x `embed_dim` (mtmd only logs it: the graph takes the tensors' shapes).
- Keys beyond the shared ones: `depth` and `num_heads` as block and head counts, the norm
  epsilon as llama.cpp's converter writes it (config.json's top-level `rms_norm_eps`, 1e-6
  without one: the value transformers' vision LayerNorms use), `image_size` 560 where the
  vision config has none. No activation flag: mtmd's default is quick GELU, the tower's.
- mtmd hard-codes a 2 x 2 merge (the converter writes no merge size for it), two frames per
  patch, a RoPE base of 10000 and quick GELU; a config that says otherwise is refused rather
  than run wrong.
"""

from __future__ import annotations

from typing import Any

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families.base import PlannedTensor
from llorch.convert.families.qwen25vl_vision import (
    CLIP_MEAN,
    CLIP_STD,
    FRAMES,
    IMAGE_SIZE,
    MERGE,
    RMS_EPS,
    plan_split,
    refuse_unlike,
)
from llorch.convert.projector import TowerShape, VisionInput, vision_int, write_tower

_T = gguf.MODEL_TENSOR

# Qwen2VLVisionConfig's defaults (transformers), for keys a config.json leaves out
DEFAULTS = {
    "embed_dim": 1280,
    "hidden_size": 3584,
    "mlp_ratio": 4,
    "depth": 32,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
}
ACTIVATION = "quick_gelu"  # mtmd's FFN op for a file without use_gelu / use_silu
ROPE_THETA = 10000.0  # models/qwen2vl.cpp's vision RoPE base


def _v(model: VisionInput, key: str) -> int:
    return vision_int(model, key, DEFAULTS[key])


def _where(model: VisionInput) -> str:
    return str(model.folder / "config.json")


def _check_fixed(model: VisionInput) -> None:
    """What mtmd's qwen2vl graph hard-codes."""
    refuse_unlike(model, "qwen2vl", {"spatial_merge_size": MERGE, "temporal_patch_size": FRAMES})
    act = model.vision.get("hidden_act", ACTIVATION)
    if act != ACTIVATION:
        raise ConfigError(
            f"{_where(model)}: vision_config.hidden_act {act!r}; llama.cpp's qwen2vl projector "
            f"runs {ACTIVATION!r} only"
        )
    rope: Any = model.vision.get("rope_parameters") or {}
    theta = rope.get("rope_theta", model.vision.get("rope_theta", ROPE_THETA))
    if float(theta) != ROPE_THETA:
        raise ConfigError(
            f"{_where(model)}: vision rope_theta {theta}; llama.cpp's qwen2vl projector runs "
            f"{ROPE_THETA:g} only"
        )


def ffn(model: VisionInput) -> int:
    return _v(model, "mlp_ratio") * _v(model, "embed_dim")


def write_hparams(model: VisionInput, w: gguf.GGUFWriter) -> None:
    _check_fixed(model)
    write_tower(
        w,
        model,
        gguf.VisionProjectorType.QWEN2VL,
        TowerShape(
            image_size=vision_int(model, "image_size", IMAGE_SIZE),
            patch_size=_v(model, "patch_size"),
            width=_v(model, "embed_dim"),
            ffn=ffn(model),
            blocks=_v(model, "depth"),
            heads=_v(model, "num_heads"),
        ),
        mean=CLIP_MEAN,
        std=CLIP_STD,
    )
    w.add_vision_attention_layernorm_eps(float(model.config.get("rms_norm_eps", RMS_EPS)))


def _expected(model: VisionInput) -> dict[_T, tuple[int, ...]]:
    width, patch, ff = _v(model, "embed_dim"), _v(model, "patch_size"), ffn(model)
    return {
        _T.V_ENC_EMBD_PATCH: (width, _v(model, "in_channels"), FRAMES, patch, patch),
        _T.V_ENC_ATTN_QKV: (3 * width, width),
        _T.V_ENC_ATTN_O: (width, width),
        _T.V_ENC_FFN_UP: (ff, width),
        _T.V_ENC_FFN_DOWN: (width, ff),
    }


def plan(model: VisionInput) -> list[PlannedTensor]:
    expected = _expected(model)
    out = _v(model, "hidden_size")
    if out != model.n_embd_text:
        raise ConfigError(
            f"{_where(model)}: vision_config.hidden_size {out} (the merger's output) is not "
            f"the text model's hidden_size {model.n_embd_text}"
        )
    return plan_split(model, "qwen2vl", _v(model, "depth"), expected)
