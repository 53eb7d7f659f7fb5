"""Qwen2.5-VL's vision part: the ViT (a Conv3D patch embedding over two frames, 2-D RoPE,
RMSNorm, gated SiLU FFN, window attention but in the `fullatt_block_indexes` layers) and the
patch merger (RMSNorm, 2 x 2 patches concatenated, two linear maps with GELU between), as
llama.cpp's clip `qwen2.5vl_merger` projector.

Facts from llama.cpp's converter (conversion/qwenvl.py `Qwen2VLVisionModel`, MmprojModel in
conversion/base.py) and mtmd (tools/mtmd/clip.cpp, models/qwen2vl.cpp, mtmd-image.cpp):
- Tensor names from gguf's MMPROJ map (`visual.*`; the merger's `mlp.0` and `mlp.2` are
  `mm.0` and `mm.2`, numbered as blocks, so the map is built for at least 3 of them).
- The fused `attn.qkv` weight and bias are split into q, k and v (thirds, in that order).
- The Conv3D patch embedding [hidden, C, 2, p, p] becomes two Conv2D kernels, one per frame:
  `v.patch_embd.weight` and `v.patch_embd.weight.1`; mtmd feeds an image as both frames.
- Keys beyond the shared ones: the vision config's `depth` and `num_heads` as block and head
  counts, SiLU, `clip.vision.n_wa_pattern` (every n-th layer attends fully: the first of
  `fullatt_block_indexes` plus one, the indexes evenly spaced), the RMSNorm epsilon as
  llama.cpp's converter writes it (config.json's top-level `rms_norm_eps`, 1e-6 without one:
  the value transformers' vision RMSNorms use), and `image_size` (560 where the vision config
  has none, as llama.cpp's converter; mtmd sizes images by its token budget, not by it).
- mtmd hard-codes what the config could say otherwise: windows of 112 pixels, a 2 x 2 merge,
  two frames per patch; a config that says otherwise is refused rather than run wrong.
- Types: the defaults (1-D tensors F32, the rest F16 or F32 as the file).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import gguf
import numpy as np

from llorch.convert.errors import ConfigError
from llorch.convert.families.base import PlannedTensor, StoredTensor
from llorch.convert.projector import TowerShape, VisionInput, plan_tower, vision_int, write_tower

_T = gguf.MODEL_TENSOR

VISION_PREFIX = "visual."

# Qwen2_5_VLVisionConfig's defaults (transformers), for keys a config.json leaves out
DEFAULTS = {
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "depth": 32,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "out_hidden_size": 3584,
}
IMAGE_SIZE = 560  # llama.cpp's converter's value where the vision config has no image_size
WINDOW = 112  # pixels: mtmd's window for qwen2.5vl (clip.cpp)
MERGE = 2  # mtmd's merge for qwen2.5vl
FRAMES = 2  # temporal_patch_size: mtmd's two Conv2D kernels
RMS_EPS = 1e-6
# Qwen2VLImageProcessor's defaults (OpenAI CLIP's)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
REQUIRED = (_T.V_ENC_EMBD_PATCH, _T.V_MMPROJ, _T.V_POST_NORM)


def _v(model: VisionInput, key: str) -> int:
    return vision_int(model, key, DEFAULTS[key])


def _where(model: VisionInput) -> str:
    return str(model.folder / "config.json")


def wa_pattern(model: VisionInput) -> int:
    """Every n-th layer attends to the whole image: n from evenly spaced indexes."""
    indexes: Any = model.vision.get("fullatt_block_indexes")
    if not isinstance(indexes, list) or not indexes:
        raise ConfigError(f"{_where(model)}: vision_config has no fullatt_block_indexes")
    n = int(indexes[0]) + 1
    if any(int(b) - int(a) != n for a, b in itertools.pairwise(indexes)):
        raise ConfigError(
            f"{_where(model)}: fullatt_block_indexes {indexes} are not every {n}th layer, the "
            "only pattern llama.cpp's qwen2.5vl projector runs"
        )
    return n


def refuse_unlike(model: VisionInput, projector: str, fixed: dict[str, int]) -> None:
    """A vision config whose values differ from what mtmd's graph hard-codes is refused."""
    for key, value in fixed.items():
        if vision_int(model, key, value) != value:
            raise ConfigError(
                f"{_where(model)}: vision_config.{key} {model.vision[key]}; llama.cpp's "
                f"{projector} projector runs {value} only"
            )


def _check_fixed(model: VisionInput) -> None:
    """What mtmd's qwen2.5vl graph hard-codes."""
    fixed = {"window_size": WINDOW, "spatial_merge_size": MERGE, "temporal_patch_size": FRAMES}
    refuse_unlike(model, "qwen2.5vl", fixed)


def write_hparams(model: VisionInput, w: gguf.GGUFWriter) -> None:
    _check_fixed(model)
    write_tower(
        w,
        model,
        gguf.VisionProjectorType.QWEN25VL,
        TowerShape(
            image_size=vision_int(model, "image_size", IMAGE_SIZE),
            patch_size=_v(model, "patch_size"),
            width=_v(model, "hidden_size"),
            ffn=_v(model, "intermediate_size"),
            blocks=_v(model, "depth"),
            heads=_v(model, "num_heads"),
        ),
        mean=CLIP_MEAN,
        std=CLIP_STD,
    )
    w.add_vision_use_silu(True)
    w.add_vision_n_wa_pattern(wa_pattern(model))
    w.add_vision_attention_layernorm_eps(float(model.config.get("rms_norm_eps", RMS_EPS)))


def _expected(model: VisionInput) -> dict[_T, tuple[int, ...]]:
    hidden, patch = _v(model, "hidden_size"), _v(model, "patch_size")
    ff = _v(model, "intermediate_size")
    return {
        _T.V_ENC_EMBD_PATCH: (hidden, _v(model, "in_channels"), FRAMES, patch, patch),
        _T.V_ENC_ATTN_QKV: (3 * hidden, hidden),
        _T.V_ENC_ATTN_O: (hidden, hidden),
        _T.V_ENC_FFN_UP: (ff, hidden),
        _T.V_ENC_FFN_GATE: (ff, hidden),
        _T.V_ENC_FFN_DOWN: (hidden, ff),
    }


def _source_name(name: str) -> str | None:
    return name if name.startswith(VISION_PREFIX) else None


def _part(model: VisionInput, source: str, index: Any) -> np.ndarray:
    return np.ascontiguousarray(model.ckpt.load_f32(source)[index])


def plan_split(
    model: VisionInput, projector: str, n_block: int, expected: dict[_T, tuple[int, ...]]
) -> list[PlannedTensor]:
    """The `visual.*` tensors as llama.cpp's Qwen2VLVisionModel writes them (Qwen2-VL's too):
    the fused qkv split into q, k and v, the Conv3D patch embedding into one Conv2D kernel per
    frame, the rest as stored; `n_block` is raised to 3 for the merger's `mm.2`."""
    ckpt = model.ckpt

    def planned(
        source: str, name: str, kind: _T, shape: tuple[int, ...]
    ) -> PlannedTensor | Sequence[PlannedTensor]:
        keep = len(shape) <= 1
        if kind == _T.V_ENC_ATTN_QKV:
            third = shape[0] // 3
            parts = []
            for i, part in enumerate((_T.V_ENC_ATTN_Q, _T.V_ENC_ATTN_K, _T.V_ENC_ATTN_V)):
                out = name.replace(".attn_qkv.", "." + gguf.TENSOR_NAMES[part].split(".")[-1] + ".")
                rows = slice(i * third, (i + 1) * third)
                load = lambda rows=rows: _part(model, source, rows)  # noqa: E731
                parts.append(PlannedTensor(out, (third, *shape[1:]), load, (source,), keep))
            return parts
        if kind == _T.V_ENC_EMBD_PATCH:
            frame = (shape[0], shape[1], *shape[3:])
            return [
                PlannedTensor(
                    name + ("" if t == 0 else f".{t}"),
                    frame,
                    lambda t=t: _part(model, source, np.s_[:, :, t]),  # type: ignore[misc]
                    (source,),
                )
                for t in range(FRAMES)
            ]
        return PlannedTensor(name, shape, StoredTensor(ckpt, source), (source,), keep)

    n_block = max(n_block, 3)  # mm.2 needs block id 2
    return plan_tower(model, projector, n_block, _source_name, expected, REQUIRED, planned)


def plan(model: VisionInput) -> list[PlannedTensor]:
    return plan_split(model, "qwen2.5vl", _v(model, "depth"), _expected(model))
