"""Gemma 4's vision part: its ViT (2-D RoPE, RMSNorms around attention and a gated MLP, a
learned x / y position table), the pooler and the multimodal embedder (RMSNorm without a
weight, one projection), as llama.cpp's clip `gemma4v` projector.

Facts from llama.cpp's converter (conversion/gemma.py `Gemma4VisionAudioModel`, MmprojModel
in conversion/base.py) and mtmd (tools/mtmd/clip.cpp, models/gemma4v.cpp):
- Tensor names from gguf's MMPROJ map, after `model.vision_tower.encoder.` is spelt
  `vision_model.model.` and the clippable linears' `.linear.weight` `.weight`; bare
  parameters (`layer_scalar`, `position_embedding_table`) are weights.
- The patch embedder's input projection, a Linear over (row, column, channel) pixels, becomes
  a conv kernel (out, channel, row, column). Its type follows the file (F16 or F32); the
  position table (2, positions, width: x then y) stays F32, as 1-D tensors do.
- Zero-dimensional tensors (std_bias / std_scale are 1-D already; the clippable linears'
  input_min/max and output_min/max, layer scalars) are written as 1-D tensors of one value,
  named after their linear's GGUF weight (`v.blk.0.attn_q.input_max`): mtmd reads them as the
  clamp bounds of the matmul with that weight.
- Keys: llama.cpp's converter writes the projector type under `clip.vision.projector_type`
  (the key of files with several modalities), an image size of 224 that mtmd does not read,
  and the norms' epsilon. mtmd hard-codes RoPE base 100, 3 x 3 pooling (read from
  `clip.vision.projector.scale_factor` where written, as here when pooling_kernel_size is not
  3) and 70 to 1120 tokens an image, aligned to patch_size x pooling.
- E2B / E4B's audio tower and its embedder go into the same file (gemma4_audio.py).
"""

from __future__ import annotations

from collections.abc import Callable

import gguf
import numpy as np

from llorch.convert.errors import ConfigError, UnmappedTensorError
from llorch.convert.families.base import PlannedTensor, StoredTensor
from llorch.convert.projector import (
    TowerInput,
    TowerShape,
    VisionInput,
    plan_tower,
    vision_int,
    write_tower,
)

_T = gguf.MODEL_TENSOR

# checkpoint prefix -> the name gguf's map knows (first match); anything else is not vision
RENAMED = (
    ("model.vision_tower.encoder.", "vision_model.model."),
    ("model.vision_tower.", "model.vision_tower."),
    ("model.embed_vision.", "model.embed_vision."),
)
CLAMPS = (".input_min", ".input_max", ".output_min", ".output_max")
BARE = ("layer_scalar", "position_embedding_table")  # parameters without a `.weight`

# Gemma4VisionConfig's defaults (transformers), for keys a config.json leaves out
DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 16,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "head_dim": 64,
    "patch_size": 16,
    "pooling_kernel_size": 3,
    "position_embedding_size": 10240,
}
IMAGE_SIZE = 224  # written as llama.cpp's converter writes it; mtmd sizes images itself
POOLING = 3  # mtmd's default n_merge for gemma4v
ROPE_THETA = 100.0  # mtmd's, hard-coded
EPS = 1e-6
MEAN, STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]  # Gemma4ImageProcessor: rescaled, not normalised
REQUIRED = (_T.V_ENC_EMBD_PATCH, _T.V_ENC_EMBD_POS, _T.V_MM_INP_PROJ)


def _v(model: VisionInput, key: str) -> int:
    return vision_int(model, key, DEFAULTS[key])


def _check(model: VisionInput) -> None:
    """Settings mtmd's gemma4v graph does not compute, refused by name."""
    heads, width = _v(model, "num_attention_heads"), _v(model, "hidden_size")
    rope = model.vision.get("rope_parameters") or {}
    act = model.vision.get("hidden_activation", "gelu_pytorch_tanh")
    for failed, why in (
        (_v(model, "num_key_value_heads") != heads, "num_key_value_heads != num_attention_heads"),
        (_v(model, "head_dim") * heads != width, "head_dim x num_attention_heads != hidden_size"),
        (float(rope.get("rope_theta", ROPE_THETA)) != ROPE_THETA, f"rope_theta {rope}"),
        (act != "gelu_pytorch_tanh", f"hidden_activation {act!r}"),
        (bool(model.vision.get("attention_bias")), "attention_bias true"),
    ):
        if failed:
            raise ConfigError(
                f"{model.folder / 'config.json'}: vision_config {why} is not supported "
                f"(llama.cpp's gemma4v graph: one KV head per head, RoPE base {ROPE_THETA:g}, "
                "GELU, no biases)"
            )


def write_hparams(model: VisionInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    shape = TowerShape(
        image_size=IMAGE_SIZE,
        patch_size=_v(model, "patch_size"),
        width=_v(model, "hidden_size"),
        ffn=_v(model, "intermediate_size"),
        blocks=_v(model, "num_hidden_layers"),
        heads=_v(model, "num_attention_heads"),
    )
    kind = gguf.VisionProjectorType.GEMMA4V
    write_tower(w, model, kind, shape, mean=MEAN, std=STD)
    # llama.cpp's converter names the type under the vision key, as for a file that may hold
    # an audio tower too; mtmd reads either
    w.kv_data[0].pop(gguf.Keys.Clip.PROJECTOR_TYPE)
    w.add_clip_vision_projector_type(kind)
    # llama.cpp's converter reads `layer_norm_eps`; transformers' RMSNorms use rms_norm_eps
    eps = model.vision.get("rms_norm_eps", model.vision.get("layer_norm_eps", EPS))
    w.add_vision_attention_layernorm_eps(float(eps))
    # Gemma 4's MLP is tanh GELU; without this key mtmd runs GELU-quick (llama.cpp's
    # converter does not write it: its files' image embeddings measure a cosine of 0.9986
    # against transformers' on the tiny test model, 0.99997 with the key)
    w.add_vision_use_gelu(True)
    pooling = _v(model, "pooling_kernel_size")
    if pooling != POOLING:
        w.add_vision_projector_scale_factor(pooling)


def _source_name(name: str) -> str | None:
    """The name gguf's map knows of a vision tensor; None for any other tensor and for the
    clamp bounds (planned beside their linear)."""
    if name.endswith(CLAMPS):
        return None
    for prefix, known in RENAMED:
        if name.startswith(prefix):
            out = known + name.removeprefix(prefix)
            out = out.replace(".linear.weight", ".weight")
            return out + ".weight" if out.endswith(BARE) else out
    return None


def _expected(model: VisionInput) -> dict[_T, tuple[int, ...]]:
    width, patch = _v(model, "hidden_size"), _v(model, "patch_size")
    return {
        _T.V_ENC_EMBD_PATCH: (width, 3 * patch * patch),
        _T.V_ENC_EMBD_POS: (2, _v(model, "position_embedding_size"), width),
        _T.V_MM_INP_PROJ: (model.n_embd_text, width),
    }


def _loader(model: TowerInput, source: str, shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
    return lambda: model.ckpt.load_f32(source).reshape(shape)


def plan(model: VisionInput) -> list[PlannedTensor]:
    _check(model)
    ckpt, patch = model.ckpt, _v(model, "patch_size")

    def planned(source: str, name: str, kind: _T, shape: tuple[int, ...]) -> PlannedTensor:
        if kind == _T.V_ENC_EMBD_PATCH:  # (out, row, column, channel) -> (out, channel, row, col)
            out = (shape[0], 3, patch, patch)
            load = lambda: (  # noqa: E731
                ckpt.load_f32(source).reshape(shape[0], patch, patch, 3).transpose(0, 3, 1, 2)
            )
            return PlannedTensor(name, out, load, (source,))
        if not shape:
            return PlannedTensor(name, (1,), _loader(model, source, (1,)), (source,), True)
        keep = kind == _T.V_ENC_EMBD_POS or len(shape) <= 1
        return PlannedTensor(name, shape, StoredTensor(ckpt, source), (source,), keep)

    n_block = _v(model, "num_hidden_layers")
    plans = plan_tower(model, "gemma4v", n_block, _source_name, _expected(model), REQUIRED, planned)
    return plans + clamp_bounds(model, plans, _source_name)


def clamp_bounds(
    model: TowerInput, plans: list[PlannedTensor], source_name: Callable[[str], str | None]
) -> list[PlannedTensor]:
    """The clippable linears' bounds of the tower's part (`source_name` not None for the
    linear), each a 1-D F32 tensor named after its linear's GGUF weight in `plans`; the
    audio tower's (gemma4_audio.py) as the vision tower's."""
    weights = {p.sources[0]: p.name for p in plans}
    bounds = []
    for ref in model.ckpt:
        if not ref.name.endswith(CLAMPS) or source_name(ref.name.rsplit(".", 1)[0]) is None:
            continue
        stem, bound = ref.name.rsplit(".", 1)
        weight = weights.get(stem + ".linear.weight")
        if weight is None:
            raise UnmappedTensorError(
                f"{ref.file}: tensor {ref.name!r} bounds a linear the {model.modality} part "
                f"lacks ({stem}.linear.weight)"
            )
        name = weight.removesuffix(".weight") + "." + bound
        bounds.append(PlannedTensor(name, (1,), _loader(model, ref.name, (1,)), (ref.name,), True))
    return bounds
