"""Qwen3-VL's and Qwen 3.5's vision part: the ViT (a Conv3D patch embedding over two frames with
a bias, a learned position grid resampled to each image, 2-D RoPE, LayerNorm, GELU FFN, fused
qkv), the patch merger (LayerNorm, 2 x 2 patches concatenated, two linear maps with GELU
between) and, for Qwen3-VL, the deepstack mergers (one per `deepstack_visual_indexes` layer:
that layer's output merged 2 x 2, LayerNorm'd after the merge, two linear maps), as llama.cpp's
clip `qwen3vl_merger` projector. Qwen 3.5's tower is Qwen3-VL's without the deepstack mergers
(transformers' modular_qwen3_5 deletes them), and llama.cpp writes it as the same projector.

Facts from llama.cpp's converter (conversion/qwen3vl.py `Qwen3VLVisionModel`, MmprojModel in
conversion/base.py) and mtmd (tools/mtmd/clip.cpp, models/qwen3vl.cpp):
- Tensors: `visual.*` (transformers 5 checkpoints: `model.visual.*`) through gguf's MMPROJ map;
  the merger's `norm`, `linear_fc1`, `linear_fc2` are Qwen2-VL's `ln_q`, `mlp.0`, `mlp.2`
  (`v.post_ln`, `mm.0`, `mm.2`); deepstack merger i is written under the tower layer it
  reads, `deepstack_visual_indexes[i]` (`v.deepstack.<layer>.*`), which is how mtmd finds it.
- The qkv weight stays fused (mtmd's graph splits it by views); the Conv3D patch embedding
  [hidden, C, 2, p, p] becomes two Conv2D kernels, `v.patch_embd.weight` and `.weight.1`; its
  bias is `v.patch_embd.bias` (mtmd's graph asserts it).
- Keys beyond the shared ones: the vision config's `depth` and `num_heads`, GELU, the merge
  size where the vision config gives one, `clip.vision.is_deepstack_layers` (one flag per
  tower layer, written even when none is set, as llama.cpp's converter does), the
  LayerNorm epsilon as llama.cpp's converter writes it (text_config's `rms_norm_eps`, 1e-6
  without one; transformers' tower uses 1e-6), and `image_size` as sqrt(positions) x patch
  (its position grid; mtmd sizes images by its token budget).
- mtmd hard-codes a 2 x 2 merge in the main merger, two frames per patch and a RoPE base of
  10000; a config that says otherwise is refused rather than run wrong.
- Types: the defaults (1-D tensors F32, the rest F16 or F32 as the file), but the position
  grid, which llama.cpp's converter always keeps F32.

The text part's embedding input is the merged row followed by one row per deepstack layer
(llama.cpp's `qwen3vl` arch adds the i-th to layer i's output): convert/families/qwen3vl.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gguf
import numpy as np

from llorch.convert.errors import ConfigError
from llorch.convert.families.base import PlannedTensor, StoredTensor
from llorch.convert.projector import TowerShape, VisionInput, plan_tower, vision_int, write_tower

_T = gguf.MODEL_TENSOR

# Qwen3VLVisionConfig's defaults (transformers), for keys a config.json leaves out
DEFAULTS = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "depth": 27,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 16,
    "out_hidden_size": 3584,
    "num_position_embeddings": 2304,
}
MERGE = 2  # mtmd's main merger reshapes 2 x 2 patches
FRAMES = 2  # temporal_patch_size: mtmd's two Conv2D kernels
ROPE_THETA = 10000.0  # mtmd's vision RoPE base for qwen3vl
RMS_EPS = 1e-6
MEAN = [0.5, 0.5, 0.5]  # Qwen3-VL's preprocessor_config.json
STD = [0.5, 0.5, 0.5]
REQUIRED = (_T.V_ENC_EMBD_PATCH, _T.V_ENC_EMBD_POS, _T.V_MMPROJ, _T.V_POST_NORM)
# the merger's names as gguf's map knows them (Qwen2-VL's)
MERGER = {"norm.": "ln_q.", "linear_fc1.": "mlp.0.", "linear_fc2.": "mlp.2."}
DEEPSTACK = "visual.deepstack_merger_list."


def _v(model: VisionInput, key: str) -> int:
    return vision_int(model, key, DEFAULTS[key])


def _where(model: VisionInput) -> str:
    return str(model.folder / "config.json")


def deepstack_layers(model: VisionInput) -> list[int]:
    """The tower layers whose outputs feed a deepstack merger (none for Qwen 3.5)."""
    raw: Any = model.vision.get("deepstack_visual_indexes", [])
    depth = _v(model, "depth")
    if not isinstance(raw, list) or not all(isinstance(i, int) and 0 <= i < depth for i in raw):
        raise ConfigError(
            f"{_where(model)}: vision_config.deepstack_visual_indexes {raw!r} are not layers "
            f"of a {depth}-layer tower"
        )
    return [int(i) for i in raw]


def image_size(model: VisionInput) -> int:
    n_pos = _v(model, "num_position_embeddings")
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise ConfigError(
            f"{_where(model)}: vision_config.num_position_embeddings {n_pos} is not a square "
            "grid (mtmd resamples a square one)"
        )
    return vision_int(model, "image_size", int(n_pos**0.5 * _v(model, "patch_size")))


def _check_fixed(model: VisionInput) -> None:
    """What mtmd's qwen3vl graph hard-codes."""
    for key, value in (("spatial_merge_size", MERGE), ("temporal_patch_size", FRAMES)):
        if vision_int(model, key, value) != value:
            raise ConfigError(
                f"{_where(model)}: vision_config.{key} {model.vision[key]}; llama.cpp's "
                f"qwen3vl projector runs {value} only"
            )
    rope: Any = model.vision.get("rope_parameters") or {}
    theta = rope.get("rope_theta", model.vision.get("rope_theta", ROPE_THETA))
    if float(theta) != ROPE_THETA:
        raise ConfigError(
            f"{_where(model)}: vision rope_theta {theta}; llama.cpp's qwen3vl projector runs "
            f"{ROPE_THETA:g} only"
        )


def _text_eps(model: VisionInput) -> float:
    text: Any = model.config.get("text_config") or {}
    return float(text.get("rms_norm_eps", RMS_EPS))


def write_hparams(model: VisionInput, w: gguf.GGUFWriter) -> None:
    _check_fixed(model)
    depth = _v(model, "depth")
    write_tower(
        w,
        model,
        gguf.VisionProjectorType.QWEN3VL,
        TowerShape(
            image_size=image_size(model),
            patch_size=_v(model, "patch_size"),
            width=_v(model, "hidden_size"),
            ffn=_v(model, "intermediate_size"),
            blocks=depth,
            heads=_v(model, "num_heads"),
        ),
        mean=MEAN,
        std=STD,
    )
    w.add_vision_use_gelu(True)
    if "spatial_merge_size" in model.vision:
        w.add_vision_spatial_merge_size(vision_int(model, "spatial_merge_size", MERGE))
    w.add_vision_attention_layernorm_eps(_text_eps(model))
    deep = set(deepstack_layers(model))
    w.add_vision_is_deepstack_layers([i in deep for i in range(depth)])


def _expected(model: VisionInput) -> dict[_T, tuple[int, ...]]:
    hidden, patch = _v(model, "hidden_size"), _v(model, "patch_size")
    ff, merged = _v(model, "intermediate_size"), _v(model, "hidden_size") * MERGE * MERGE
    return {
        _T.V_ENC_EMBD_PATCH: (hidden, _v(model, "in_channels"), FRAMES, patch, patch),
        _T.V_ENC_EMBD_POS: (_v(model, "num_position_embeddings"), hidden),
        _T.V_ENC_ATTN_QKV: (3 * hidden, hidden),
        _T.V_ENC_ATTN_O: (hidden, hidden),
        _T.V_ENC_FFN_UP: (ff, hidden),
        _T.V_ENC_FFN_DOWN: (hidden, ff),
        _T.V_DS_FC1: (merged, merged),
        _T.V_DS_FC2: (model.n_embd_text, merged),
    }


def _source_name(model: VisionInput) -> Any:
    layers = deepstack_layers(model)

    def name_for_map(name: str) -> str | None:
        """A checkpoint tensor's name as gguf's MMPROJ map knows it."""
        if name.startswith("model.visual."):
            name = name.removeprefix("model.")
        if not name.startswith("visual."):
            return None
        if name.startswith("visual.merger."):
            rest = name.removeprefix("visual.merger.")
            for ours, known in MERGER.items():
                if rest.startswith(ours):
                    return "visual.merger." + known + rest.removeprefix(ours)
            return name  # unmapped: plan_tower names it
        if name.startswith(DEEPSTACK):
            index, _, rest = name.removeprefix(DEEPSTACK).partition(".")
            if not index.isdigit() or int(index) >= len(layers):
                return name  # unmapped: plan_tower names it
            return f"model.{DEEPSTACK}{layers[int(index)]}.{rest}"
        return name

    return name_for_map


def _frame(model: VisionInput, source: str, t: int) -> np.ndarray:
    return np.ascontiguousarray(model.ckpt.load_f32(source)[:, :, t])


def plan(model: VisionInput) -> list[PlannedTensor]:
    ckpt = model.ckpt

    def planned(
        source: str, name: str, kind: _T, shape: tuple[int, ...]
    ) -> PlannedTensor | Sequence[PlannedTensor]:
        if kind == _T.V_ENC_EMBD_PATCH and len(shape) == 5:
            frame = (shape[0], shape[1], *shape[3:])
            return [
                PlannedTensor(
                    name + ("" if t == 0 else f".{t}"),
                    frame,
                    lambda t=t: _frame(model, source, t),  # type: ignore[misc]
                    (source,),
                )
                for t in range(FRAMES)
            ]
        keep = len(shape) <= 1 or kind == _T.V_ENC_EMBD_POS
        return PlannedTensor(name, shape, StoredTensor(ckpt, source), (source,), keep)

    n_block = max(_v(model, "depth"), 3)  # mm.2 needs block id 2
    return plan_tower(
        model, "qwen3vl", n_block, _source_name(model), _expected(model), REQUIRED, planned
    )
