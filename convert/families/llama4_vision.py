"""Llama 4's vision part (Scout, Maverick): the ViT (a linear patch embedding over unfolded
patches, a class token after the patches, learned positions plus 2-D RoPE, LayerNorms, a GELU
MLP), its pixel-shuffle adapter (two linear maps, GELU after each) and the projector's one
linear map, as llama.cpp's clip `llama4` projector.

Facts from transformers' modeling_llama4, llama.cpp's converter (conversion/llama4.py
`Llama4VisionModel`, MmprojModel in conversion/base.py) and mtmd (tools/mtmd/clip.cpp,
models/llama4.cpp):
- Tensor names from gguf's MMPROJ map (`vision_model.*`); the adapter's `mlp.fc1` / `fc2` are
  numbered as blocks (`mm.model.mlp.1`, `.2`), so the map is built for at least 3 of them.
  `positional_embedding_vlm` is a bare parameter, named `v.position_embd.weight` as llama.cpp's
  converter names it; `multi_modal_projector.linear_1` is one fully connected map,
  `mm.model.fc`, as mtmd reads it.
- Each layer's `post_attention_layernorm` is transformers' pre-FFN norm (residual + attention,
  then that norm, then the MLP). gguf's map names it `attn_post_norm` (a Gemma 4 row that
  shadows Llama 4's `ln2`), which mtmd applies to the attention output before the residual
  and leaves the FFN's input unnormalised: llorch writes `ln2`, mtmd's pre-FFN norm.
- Keys beyond the shared ones: GELU (`clip.use_gelu`; transformers' tower and adapter run
  GELU whatever `hidden_act` says), the adapter's scale factor 1 / `pixel_shuffle_ratio`, and
  the LayerNorm epsilon 1e-5: transformers' vision LayerNorms use torch's default, not
  `norm_eps` (llama.cpp's converter writes `norm_eps`; released configs give 1e-5 too).
- mtmd hard-codes a vision RoPE base of 10000 and square images (llava-uhd tiles of
  `image_size`, plus an overview where an image has more than one); a config that says
  otherwise is refused rather than run wrong.
- mtmd's pixel shuffle leaves out transformers' last permute (models/llama4.cpp), so a tile's
  tokens come column by column where transformers gives them row by row: the same rows in
  another order, which no conversion undoes (the order comes from the graph, not the weights).
- Types: 1-D tensors and the position embeddings F32 (as llama.cpp's converter writes them),
  the rest F16 or F32 as the file.
"""

from __future__ import annotations

import re
from typing import Any

import gguf

from llorch.convert.errors import ConfigError, ShapeMismatchError
from llorch.convert.families.base import PlannedTensor, StoredTensor
from llorch.convert.projector import TowerShape, VisionInput, plan_tower, vision_int, write_tower

_T = gguf.MODEL_TENSOR

VISION_PREFIXES = ("vision_model.", "multi_modal_projector.")
POSITIONS = "vision_model.positional_embedding_vlm"  # a bare parameter: no `.weight`
# Llama4VisionConfig's defaults (transformers), for keys a config.json leaves out
DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 5632,
    "num_hidden_layers": 34,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 448,
    "patch_size": 14,
    "vision_output_dim": 7680,
    "projector_input_dim": 4096,
    "projector_output_dim": 4096,
}
PIXEL_SHUFFLE_RATIO = 0.5
LAYER_NORM_EPS = 1e-5  # torch's LayerNorm default, which transformers' vision tower keeps
ROPE_THETA = 10000.0  # clip.cpp's llama4 vision RoPE base
MEAN = [0.5, 0.5, 0.5]  # Llama4ImageProcessor's defaults
STD = [0.5, 0.5, 0.5]
LAYER = re.compile(r"\.layers\.(\d+)\.")
# gguf's map names the pre-FFN norm as Gemma 4's post-attention norm (see above), and the
# projector's linear_1 as a numbered MLP layer
RENAMED = {_T.V_ENC_ATTN_POST_NORM: _T.V_ENC_POST_ATTN_NORM, _T.V_MMPROJ: _T.V_MMPROJ_FC}
# F32 in every file, as llama.cpp's converter keeps it: mtmd adds it to the F32 patch rows, an
# add ggml's CPU backend has no F16 operand for
KEEP_F32 = frozenset({_T.V_ENC_EMBD_POS})
REQUIRED = (
    _T.V_ENC_EMBD_PATCH,
    _T.V_ENC_EMBD_CLS,
    _T.V_ENC_EMBD_POS,
    _T.V_MMPROJ_MLP,
    _T.V_MMPROJ,
)


def _v(model: VisionInput, key: str) -> int:
    return vision_int(model, key, DEFAULTS[key])


def _where(model: VisionInput) -> str:
    return str(model.folder / "config.json")


def scale_factor(model: VisionInput) -> int:
    """The pixel shuffle's factor per side: 1 / pixel_shuffle_ratio, a whole number that
    divides the patches per side (mtmd's graph asserts it)."""
    ratio = float(model.vision.get("pixel_shuffle_ratio", PIXEL_SHUFFLE_RATIO))
    factor = round(1.0 / ratio) if ratio > 0 else 0
    side = _v(model, "image_size") // _v(model, "patch_size")
    if factor < 1 or abs(factor * ratio - 1.0) > 1e-6 or side % factor:
        raise ConfigError(
            f"{_where(model)}: vision_config.pixel_shuffle_ratio {ratio} is not 1 / n for an n "
            f"that divides the {side} patches a side (llama.cpp's llama4 projector)"
        )
    return factor


def _check(model: VisionInput) -> None:
    """What mtmd's llama4 graph hard-codes."""
    rope: Any = model.vision.get("rope_parameters") or {}
    theta = rope.get("rope_theta", model.vision.get("rope_theta", ROPE_THETA))
    if float(theta) != ROPE_THETA:
        raise ConfigError(
            f"{_where(model)}: vision rope_theta {theta}; llama.cpp's llama4 projector runs "
            f"{ROPE_THETA:g} only"
        )
    for key in ("image_size", "patch_size"):
        if isinstance(model.vision.get(key), list):
            raise ConfigError(
                f"{_where(model)}: vision_config.{key} {model.vision[key]}; llama.cpp's llama4 "
                "projector reads one side (square images)"
            )
    scale_factor(model)


def write_hparams(model: VisionInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    write_tower(
        w,
        model,
        gguf.VisionProjectorType.LLAMA4,
        TowerShape.vit(lambda key: _v(model, key)),
        mean=MEAN,
        std=STD,
    )
    w.add_vision_attention_layernorm_eps(LAYER_NORM_EPS)
    w.add_vision_projector_scale_factor(scale_factor(model))
    w.add_vision_use_gelu(True)


def _expected(model: VisionInput) -> dict[_T, tuple[int, ...]]:
    """Weight shapes by kind; the adapter's by its source (`mlp.fc1`, `mlp.fc2`)."""
    width, patch = _v(model, "hidden_size"), _v(model, "patch_size")
    ff, side = _v(model, "intermediate_size"), _v(model, "image_size") // patch
    return {
        _T.V_ENC_EMBD_PATCH: (width, _v(model, "num_channels") * patch * patch),
        _T.V_ENC_EMBD_POS: (side * side + 1, width),
        _T.V_ENC_EMBD_CLS: (width,),
        _T.V_ENC_FFN_UP: (ff, width),
        _T.V_ENC_FFN_DOWN: (width, ff),
        _T.V_MMPROJ_FC: (model.n_embd_text, _v(model, "vision_output_dim")),
    }


def _adapter(model: VisionInput) -> dict[str, tuple[int, ...]]:
    """The adapter's weights: mtmd's pixel shuffle gives width x factor^2 features a token
    (transformers sizes fc1's input as the tower's intermediate_size)."""
    width, factor = _v(model, "hidden_size"), scale_factor(model)
    out = _v(model, "projector_output_dim")
    return {"fc1": (_v(model, "projector_input_dim"), width * factor * factor), "fc2": (out, out)}


def _source_name(name: str) -> str | None:
    if not name.startswith(VISION_PREFIXES):
        return None
    return name + ".weight" if name == POSITIONS else name


def _renamed(name: str, kind: _T, source: str) -> tuple[str, _T]:
    """The GGUF name mtmd reads where gguf's map gives another (RENAMED)."""
    new = RENAMED.get(kind)
    if new is None:
        return name, kind
    bid = LAYER.search(source)
    suffix = name[name.rindex(".") :] if name.endswith((".weight", ".bias")) else ""
    return gguf.TENSOR_NAMES[new].format(bid=bid[1] if bid else None) + suffix, new


def plan(model: VisionInput) -> list[PlannedTensor]:
    _check(model)
    ckpt = model.ckpt
    expected, adapter = _expected(model), _adapter(model)

    def planned(source: str, name: str, kind: _T, shape: tuple[int, ...]) -> PlannedTensor:
        name, kind = _renamed(name, kind, source)
        want = expected.get(kind)
        if kind == _T.V_MMPROJ_MLP:
            want = adapter[source.removesuffix(".weight").rsplit(".", 1)[-1]]
        if want is not None and not source.endswith(".bias") and shape != want:
            raise ShapeMismatchError(
                f"{ckpt.refs[source].file}: tensor {source!r} has shape {list(shape)}, "
                f"config.json implies {list(want)} (llama.cpp's llama4 projector)"
            )
        keep = len(shape) <= 1 or kind in KEEP_F32
        return PlannedTensor(name, shape, StoredTensor(ckpt, source), (source,), keep)

    n_block = max(_v(model, "num_hidden_layers"), 3)  # mm.model.mlp.1 and .2 are block ids
    return plan_tower(model, "llama4", n_block, _source_name, {}, REQUIRED, planned)
