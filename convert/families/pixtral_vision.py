"""Mistral 3's vision part (Mistral Small 3.1 / 3.2, Ministral 3 with vision): the Pixtral tower
(2-D RoPE, RMSNorm, gated FFN) and Mistral 3's projector (RMSNorm, a patch merger of
`spatial_merge_size`, two linear maps with GELU between), as llama.cpp's clip `pixtral`
projector.

Facts from llama.cpp's converter (conversion/llava.py `LlavaVisionModel`, MmprojModel in
conversion/base.py) and mtmd (tools/mtmd/clip.cpp, models/pixtral.cpp):
- Tensor names from gguf's MMPROJ map (`vision_tower.*`, `multi_modal_projector.*`); the map's
  `mm.{bid}` rows (linear_1, linear_2) are numbered as blocks, so the map is built for at least
  3 of them.
- The tower's q and k projections are permuted from the rotate-half layout to llama.cpp's
  interleaved one, per head (as Llama's text attention).
- `v.token_embd.img_break`: the row of the text model's token embeddings for `[IMG_BREAK]`
  (its id from tokenizer_config.json's added_tokens_decoder, else tokenizer.json's
  added_tokens); mtmd puts it after every row of an image's merged patches but the last.
- Keys beyond the shared ones: the LayerNorm epsilon (`layer_norm_eps`, 1e-5 where absent: the
  value modeling_pixtral.py hard-codes), SiLU or GELU as `hidden_act`, and
  `clip.vision.spatial_merge_size` where config.json has `spatial_merge_size`. mtmd uses RoPE
  base 10000 and resizes an image only to fit its token budget, in multiples of
  patch_size x spatial_merge_size.
- Types: the defaults (1-D tensors F32, the rest F16 or F32 as the file).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np

from llorch.convert.errors import ConfigError, MissingTensorError
from llorch.convert.families.base import PlannedTensor, StoredTensor
from llorch.convert.families.llama import permute_rope
from llorch.convert.projector import TowerShape, VisionInput, plan_tower, vision_int, write_tower

_T = gguf.MODEL_TENSOR

VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.")
# the text model's token embeddings, as transformers 4 and 5 save Mistral 3
EMBEDDINGS = (
    "language_model.model.embed_tokens.weight",
    "model.language_model.embed_tokens.weight",
)
IMG_BREAK = "[IMG_BREAK]"

# PixtralVisionConfig's defaults (transformers), for keys a config.json leaves out
DEFAULTS = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 1024,
    "patch_size": 16,
}
LAYER_NORM_EPS = 1e-5
MEAN = [0.48145466, 0.4578275, 0.40821073]  # PixtralImageProcessor's defaults (CLIP's)
STD = [0.26862954, 0.26130258, 0.27577711]
ACTIVATIONS = {
    "silu": gguf.GGUFWriter.add_vision_use_silu,
    "gelu": gguf.GGUFWriter.add_vision_use_gelu,
}
ROTARY = frozenset({_T.V_ENC_ATTN_Q, _T.V_ENC_ATTN_K})
REQUIRED = (_T.V_ENC_EMBD_PATCH, _T.V_MMPROJ)


def _v(model: VisionInput, key: str) -> int:
    return vision_int(model, key, DEFAULTS[key])


def write_hparams(model: VisionInput, w: gguf.GGUFWriter) -> None:
    write_tower(
        w,
        model,
        gguf.VisionProjectorType.PIXTRAL,
        TowerShape.vit(lambda key: _v(model, key)),
        mean=MEAN,
        std=STD,
    )
    w.add_vision_attention_layernorm_eps(float(model.vision.get("layer_norm_eps", LAYER_NORM_EPS)))
    act = model.vision.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ConfigError(
            f"{model.folder / 'config.json'}: vision hidden_act {act!r}; llama.cpp's pixtral "
            f"projector runs {', '.join(ACTIVATIONS)}"
        )
    ACTIVATIONS[act](w, True)
    merge = model.config.get("spatial_merge_size")
    if merge is not None:
        w.add_vision_spatial_merge_size(int(merge))


def img_break_id(folder: Path) -> int:
    """`[IMG_BREAK]`'s id, where llama.cpp's converter looks for it."""
    config = folder / "tokenizer_config.json"
    if config.is_file():
        decoder = json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder") or {}
        for key, token in decoder.items():
            if token.get("content") == IMG_BREAK:
                return int(key)
    tokenizer = folder / "tokenizer.json"
    if tokenizer.is_file():
        for token in json.loads(tokenizer.read_text(encoding="utf-8")).get("added_tokens", []):
            if token.get("content") == IMG_BREAK:
                return int(token["id"])
    raise ConfigError(f"{folder}: no {IMG_BREAK} token in tokenizer_config.json or tokenizer.json")


def _row(model: VisionInput, name: str, index: int) -> np.ndarray:
    """Row `index` of a 2-D checkpoint tensor as float32, read alone (not the whole matrix)."""
    ckpt = model.ckpt
    n_rows, width = ckpt.shape(name)
    if not 0 <= index < n_rows:
        raise ConfigError(f"{model.folder}: {IMG_BREAK} id {index} is outside {name} ({n_rows})")
    raw = ckpt.read_into(name, index * width, np.empty(width, ckpt.stored_dtype(name)))
    if raw.dtype == np.uint16:  # BF16: the high half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def _expected(model: VisionInput) -> dict[_T, tuple[int, ...]]:
    hidden, patch = _v(model, "hidden_size"), _v(model, "patch_size")
    return {_T.V_ENC_EMBD_PATCH: (hidden, _v(model, "num_channels"), patch, patch)}


def _source_name(name: str) -> str | None:
    return name if name.startswith(VISION_PREFIXES) else None


def plan(model: VisionInput) -> list[PlannedTensor]:
    ckpt = model.ckpt
    n_head = _v(model, "num_attention_heads")

    def planned(source: str, name: str, kind: _T, shape: tuple[int, ...]) -> PlannedTensor:
        keep = len(shape) <= 1
        if kind in ROTARY:
            load = lambda: permute_rope(ckpt.load_f32(source), n_head)  # noqa: E731
            return PlannedTensor(name, shape, load, (source,), keep)
        return PlannedTensor(name, shape, StoredTensor(ckpt, source), (source,), keep)

    n_block = max(_v(model, "num_hidden_layers"), 3)  # mm.1 and mm.2 need block ids 1 and 2
    plans = plan_tower(model, "pixtral", n_block, _source_name, _expected(model), REQUIRED, planned)
    embeddings = next((name for name in EMBEDDINGS if name in ckpt), None)
    if embeddings is None:
        raise MissingTensorError(
            f"{model.folder}: no text token embeddings ({' or '.join(EMBEDDINGS)}) for the "
            f"{IMG_BREAK} row llama.cpp's pixtral projector needs"
        )
    index = img_break_id(model.folder)
    name = gguf.TENSOR_NAMES[_T.V_TOK_EMBD_IMG_BREAK]
    width = ckpt.shape(embeddings)[1]
    plans.append(
        PlannedTensor(name, (width,), lambda: _row(model, embeddings, index), (embeddings,), True)
    )
    return plans
