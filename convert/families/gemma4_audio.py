"""Gemma 4's audio part (E2B, E4B): the conformer encoder (a two-convolution subsampler, layers
of half-step feed-forwards around chunked local attention with relative positions and a light
depthwise convolution, an output projection) and the audio embedder (RMSNorm without a weight,
one projection), as llama.cpp's clip `gemma4a` projector, in the same file as the vision
tower (gemma4_vision.py).

Facts from llama.cpp's converter (conversion/gemma.py `Gemma4VisionAudioModel`, MmprojModel
in conversion/base.py) and mtmd (tools/mtmd/clip.cpp, models/gemma4a.cpp, mtmd-audio.cpp):
- Tensor names from gguf's MMPROJ map, after `model.audio_tower.` is spelt `conformer.` and
  the clippable linears' `.linear.` dropped; `per_dim_scale` is a weight, stored through
  softplus (the graph multiplies by it as is). The clamp bounds are 1-D tensors named after
  their linear's weight, as the vision tower's (gemma4_vision.clamp_bounds).
- The depthwise convolution's kernel (channels, 1, width) is stored (channels, width), the
  layout of ggml_ssm_conv. The subsampler's tensors and the depthwise kernels stay F32
  whatever the file's type (llama.cpp's converter forces every audio tensor whose name holds
  `.conv` or `_conv`); 1-D tensors are F32 as everywhere.
- Keys: the audio keys llama.cpp's converter writes with its type (`clip.audio.*`): the
  feed-forward width as 4 x hidden_size, the mel bins from `input_feat_size` (128 where the
  config has none), the norms' epsilon.
- mtmd hard-codes what the config could say otherwise, and such a config is refused rather
  than run wrong: chunks of 12 frames attending 12 back and none ahead, logits capped at 50,
  a depthwise kernel of 5, residual weight 0.5, SiLU, RMSNorm epsilon 1e-6; its front-end is
  16 kHz, 20 ms windows, 10 ms hops, a 512-point FFT (refused where the processor config's
  feature_extractor says otherwise). It puts `<|audio>` and `<audio|>` around an audio's rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gguf
import numpy as np

from llorch.convert.errors import ConfigError, ShapeMismatchError
from llorch.convert.families.base import PlannedTensor, StoredTensor
from llorch.convert.families.gemma4_vision import CLAMPS, clamp_bounds
from llorch.convert.projector import (
    AudioInput,
    AudioShape,
    plan_tower,
    tower_int,
    write_audio_tower,
)

_T = gguf.MODEL_TENSOR

# checkpoint prefix -> the name gguf's map knows; anything else is not audio
RENAMED = (
    ("model.audio_tower.", "conformer."),
    ("model.embed_audio.", "model.embed_audio."),
)
SCALES = ("per_dim_scale", "per_dim_key_scale")  # parameters without a `.weight`, softplus'd
SQUARE = ("attn_q", "attn_k", "attn_v", "attn_out", "attn_k_rel", "conv_pw2")  # hidden x hidden

# Gemma4AudioConfig's defaults (transformers), for keys a config.json leaves out
DEFAULTS = {
    "hidden_size": 1024,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "output_proj_dims": 1536,
    "input_feat_size": 128,  # llama.cpp's converter's default: transformers has no such key
}
KERNEL = 5  # the depthwise convolution's width
# what mtmd's gemma4a graph computes whatever the file says (models/gemma4a.cpp)
FIXED: Mapping[str, object] = {
    "attention_chunk_size": 12,
    "attention_context_left": 13,
    "attention_context_right": 0,
    "attention_logit_cap": 50.0,
    "conv_kernel_size": KERNEL,
    "residual_weight": 0.5,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
}
EPS = 1e-6
# mtmd's front-end (clip.cpp, mtmd-audio.cpp) against Gemma4AudioFeatureExtractor's keys
FRONT_END = {"sampling_rate": 16000, "frame_length_ms": 20.0, "hop_length_ms": 10.0}
REQUIRED = (_T.A_ENC_CONV1D, _T.A_ENC_INP_PROJ, _T.A_ENC_OUT, _T.A_MM_INP_PROJ)


def _a(model: AudioInput, key: str) -> int:
    return tower_int(model, key, DEFAULTS[key])


def _channels(model: AudioInput) -> tuple[int, int]:
    channels = model.audio.get("subsampling_conv_channels", [128, 32])
    if not (isinstance(channels, list) and len(channels) == 2):
        raise ConfigError(
            f"{model.folder / 'config.json'}: audio_config.subsampling_conv_channels "
            f"{channels!r}: llama.cpp's gemma4a graph has two subsampling convolutions"
        )
    return int(channels[0]), int(channels[1])


def _check(model: AudioInput) -> None:
    """Settings mtmd's gemma4a graph and front-end do not compute, refused by name."""
    where = model.folder / "config.json"
    for key, value in FIXED.items():
        given = model.audio.get(key, value)
        if given != value:
            raise ConfigError(
                f"{where}: audio_config.{key} {given!r} is not supported (llama.cpp's gemma4a "
                f"graph computes {value!r})"
            )
    extractor: Any = model.preprocessor.get("feature_extractor")
    front = {**FRONT_END, "feature_size": _a(model, "input_feat_size")}
    for key, value in front.items():
        given = extractor.get(key, value) if isinstance(extractor, dict) else value
        if given != value:
            raise ConfigError(
                f"{model.folder}: feature_extractor.{key} {given!r}; llama.cpp's gemma4a "
                f"front-end computes {value!r}"
            )
    _channels(model)


def write_hparams(model: AudioInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    hidden = _a(model, "hidden_size")
    shape = AudioShape(
        width=hidden,
        ffn=4 * hidden,
        blocks=_a(model, "num_hidden_layers"),
        heads=_a(model, "num_attention_heads"),
    )
    kind = gguf.VisionProjectorType.GEMMA4A
    write_audio_tower(w, model, kind, shape)
    # as llama.cpp's converter names it, beside the vision tower's type
    w.kv_data[0].pop(gguf.Keys.Clip.PROJECTOR_TYPE)
    w.add_clip_audio_projector_type(kind)
    w.add_audio_num_mel_bins(_a(model, "input_feat_size"))
    w.add_audio_attention_layernorm_eps(EPS)


def _source_name(name: str) -> str | None:
    """The name gguf's map knows of an audio tensor; None for any other tensor and for the
    clamp bounds (planned beside their linear)."""
    if name.endswith(CLAMPS):
        return None
    for prefix, known in RENAMED:
        if name.startswith(prefix):
            out = known + name.removeprefix(prefix)
            out = out.replace(".linear.", ".")
            return out + ".weight" if out.endswith(SCALES) else out
    return None


def _expected(model: AudioInput) -> dict[str, tuple[int, ...]]:
    """Weight shapes by GGUF name where a kind has several (the two convolutions), then by
    kind's name in block 0 (every block alike)."""
    hidden, c0, c1 = _a(model, "hidden_size"), *_channels(model)
    mels, heads = _a(model, "input_feat_size"), _a(model, "num_attention_heads")
    freq = mels
    for _ in range(2):  # 3 x 3 kernels, stride 2, padding 1
        freq = (freq - 1) // 2 + 1
    out = _a(model, "output_proj_dims")
    return {
        "a.conv1d.0.weight": (c0, 1, 3, 3),
        "a.conv1d.1.weight": (c1, c0, 3, 3),
        # mtmd flattens the subsampler's channels x frequencies: the projection reads them all
        "a.input_projection.weight": (hidden, freq * c1),
        "a.pre_encode.out.weight": (out, hidden),
        "mm.a.input_projection.weight": (model.n_embd_text, out),
        "a.blk.ffn_up.weight": (4 * hidden, hidden),
        "a.blk.ffn_down.weight": (hidden, 4 * hidden),
        "a.blk.conv_pw1.weight": (2 * hidden, hidden),
        **{f"a.blk.{n}.weight": (hidden, hidden) for n in SQUARE},
        "a.blk.conv_dw.weight": (hidden, 1, KERNEL),
        "a.blk.per_dim_scale.weight": (hidden // heads,),
    }


def _softplus(x: np.ndarray) -> np.ndarray:
    """torch's softplus (x itself above 20), computed in float64."""
    x64 = x.astype(np.float64)
    return np.where(x64 > 20.0, x64, np.log1p(np.exp(np.minimum(x64, 20.0)))).astype(np.float32)


def _block_free(name: str) -> str:
    """`a.blk.3.ffn_up_1.weight` -> `a.blk.ffn_up.weight`: the key of _expected."""
    parts = name.split(".")
    if len(parts) > 2 and parts[1] == "blk":
        parts = [parts[0], parts[1], parts[3].removesuffix("_1"), *parts[4:]]
    return ".".join(parts)


def plan(model: AudioInput) -> list[PlannedTensor]:
    _check(model)
    ckpt = model.ckpt
    expected = _expected(model)

    def planned(source: str, name: str, kind: _T, shape: tuple[int, ...]) -> PlannedTensor:
        want = expected.get(_block_free(name))
        if want is not None and not source.endswith(".bias") and shape != want:
            raise ShapeMismatchError(
                f"{model.folder}: tensor {source!r} has shape {list(shape)}, config.json "
                f"implies {list(want)}"
            )
        if source.endswith(SCALES):  # the graph multiplies by softplus(scale)
            load = lambda: _softplus(ckpt.load_f32(source))  # noqa: E731
            return PlannedTensor(name, shape, load, (source,), True)
        if kind == _T.A_ENC_CONV_DW:  # (channels, 1, width) -> (channels, width), F32
            out = (shape[0], shape[2])
            load = lambda: ckpt.load_f32(source).reshape(out)  # noqa: E731
            return PlannedTensor(name, out, load, (source,), True)
        # llama.cpp's converter keeps the subsampler's tensors F32 (`_conv` in their names)
        keep = len(shape) <= 1 or "_conv" in source or ".conv" in source
        return PlannedTensor(name, shape, StoredTensor(ckpt, source), (source,), keep)

    n_block = max(_a(model, "num_hidden_layers"), 2)  # the subsampler's layers are blocks 0, 1
    plans = plan_tower(model, "gemma4a", n_block, _source_name, {}, REQUIRED, planned)
    return plans + clamp_bounds(model, plans, _source_name)
