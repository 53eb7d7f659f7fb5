"""Qwen3-ASR's audio part (transformers' `qwen3_asr` port, Qwen/Qwen3-ASR-*-hf): the encoder
(three 2-D convolutions with stride 2 over 100-frame chunks of the log-mel spectrogram, a
linear map of their channels x frequencies to the width, sinusoidal positions restarting with
each chunk, pre-norm LayerNorm layers attending within windows of 8 chunks, a final LayerNorm)
and its projector (two linear maps with GELU between), as llama.cpp's clip `qwen3a` projector.

Facts from llama.cpp's converter (conversion/qwen3vl.py `Qwen3ASRMmprojModel` and the
`Qwen3OmniMmprojModel`, `Qwen25AudioModel` it extends, MmprojModel in conversion/base.py) and
mtmd (tools/mtmd/clip.cpp, models/qwen3a.cpp, mtmd-audio.cpp, mtmd.cpp):
- llama.cpp's converter reads the original release's layout (`thinker_config`,
  `thinker.audio_tower.proj1`/`proj2`); transformers' port keeps the projector apart as
  `model.multi_modal_projector.linear_1`/`linear_2`, which are the same maps: read here as
  gguf's `audio.multi_modal_projector.linear_{1,2}` (mm.a.mlp.1, mm.a.mlp.2).
- The checkpoint has no position table (transformers computes its sinusoids); the file gets
  the 1500 rows llama.cpp's converter generates (the graph reads the first 13), F32.
- The convolutions' kernels, and `conv_out` (its name holds `.conv`), are F16 whatever the
  file's type (llama.cpp's converter forces them); the convolutions' biases are [1, 1, n]
  (ggml adds them per channel), F32.
- Keys beyond the shared ones: `num_mel_bins`, the LayerNorm epsilon 1e-5 (transformers builds
  its LayerNorms with the default); the projector type under `clip.audio.projector_type`.
- mtmd hard-codes what the checkpoint could say otherwise, and such a checkpoint is refused
  before anything is written: a Whisper front-end of 16 kHz, 400-sample FFT windows and
  160-sample hops, `feature_size` equal to `num_mel_bins`; chunks of 100 frames (`n_window`
  50: 13 rows per chunk); windows of 800 frames (`n_window_infer`), each encoded alone; exact
  GELU (`gelu`) in the convolutions, the encoder and the projector. mtmd puts
  `<|audio_start|>` and `<|audio_end|>` around an audio's rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gguf
import numpy as np

from llorch.convert.errors import ConfigError
from llorch.convert.families.base import PlannedTensor, StoredTensor
from llorch.convert.projector import (
    AudioInput,
    AudioShape,
    plan_tower,
    tower_int,
    write_audio_tower,
)

_T = gguf.MODEL_TENSOR
_Q = gguf.GGMLQuantizationType

# Qwen3ASREncoderConfig's defaults (transformers), for keys a config.json leaves out
DEFAULTS = {
    "d_model": 1024,
    "encoder_ffn_dim": 4096,
    "encoder_layers": 24,
    "encoder_attention_heads": 16,
    "num_mel_bins": 128,
    "downsample_hidden_size": 480,
    "output_dim": 3584,
}
# transformers' attribute_map: the names AudioShape.whisper reads
NAMES = {
    "hidden_size": "d_model",
    "intermediate_size": "encoder_ffn_dim",
    "num_hidden_layers": "encoder_layers",
    "num_attention_heads": "encoder_attention_heads",
}
LAYER_NORM_EPS = 1e-5
POSITIONS = 1500  # the rows llama.cpp's converter generates
MAX_TIMESCALE = 10000.0
# what mtmd's qwen3a graph and preprocessor compute whatever the config says
FIXED: Mapping[str, object] = {"n_window": 50, "n_window_infer": 800}
ACTIVATION = "gelu"  # exact GELU: mtmd's gelu_erf
# mtmd's front-end (clip.cpp, mtmd-audio.cpp) against the feature extractor's keys
FRONT_END = {"sampling_rate": 16000, "n_fft": 400, "hop_length": 160, "n_window": 50}
REQUIRED = (_T.A_ENC_CONV2D, _T.A_ENC_CONV_OUT, _T.A_POST_NORM, _T.A_MMPROJ)


def _a(model: AudioInput, key: str) -> int:
    key = NAMES.get(key, key)
    return tower_int(model, key, DEFAULTS[key])


def _extractor(model: AudioInput) -> Mapping[str, Any]:
    """preprocessor_config.json's keys, or processor_config.json's `feature_extractor`."""
    nested = model.preprocessor.get("feature_extractor")
    return {**model.preprocessor, **(nested if isinstance(nested, dict) else {})}


def _check(model: AudioInput) -> None:
    """Settings mtmd's qwen3a graph and front-end do not compute, refused by name."""
    where = model.folder / "config.json"
    for key, value in FIXED.items():
        given = model.audio.get(key, value)
        if given != value:
            raise ConfigError(
                f"{where}: audio_config.{key} {given!r} is not supported (llama.cpp's qwen3a "
                f"graph computes {value!r})"
            )
    act = model.audio.get("activation_function", ACTIVATION)
    if act != ACTIVATION:
        raise ConfigError(
            f"{where}: audio_config.activation_function {act!r}; llama.cpp's qwen3a projector "
            f"runs {ACTIVATION!r} (exact GELU) only"
        )
    extractor = _extractor(model)
    front = {**FRONT_END, "feature_size": _a(model, "num_mel_bins")}
    for key, value in front.items():
        given = extractor.get(key, value)
        if given != value:
            raise ConfigError(
                f"{model.folder}: the feature extractor's {key} {given!r}; llama.cpp's qwen3a "
                f"front-end computes {value!r} (16 kHz Whisper features, num_mel_bins)"
            )


def write_hparams(model: AudioInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    kind = gguf.VisionProjectorType.QWEN3A
    write_audio_tower(w, model, kind, AudioShape.whisper(lambda key: _a(model, key)))
    # as llama.cpp's converter names it (a type per tower)
    w.kv_data[0].pop(gguf.Keys.Clip.PROJECTOR_TYPE)
    w.add_audio_num_mel_bins(_a(model, "num_mel_bins"))
    w.add_audio_attention_layernorm_eps(LAYER_NORM_EPS)
    w.add_clip_audio_projector_type(kind)


def sinusoids(length: int, channels: int) -> np.ndarray:
    """transformers' SinusoidsPositionEmbedding table (sines then cosines): its float32
    exponents and angles, each exp, sin and cos computed in float64 and rounded (torch's
    float32 functions may be a unit in the last place away)."""
    increment = np.float32(-np.log(MAX_TIMESCALE) / (channels // 2 - 1))
    exponents = increment * np.arange(channels // 2, dtype=np.float32)
    inv = np.exp(exponents.astype(np.float64)).astype(np.float32)
    angles = (np.arange(length, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float64)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def _source_name(name: str) -> str | None:
    if name.startswith("model.audio_tower."):
        return name.removeprefix("model.")
    if name.startswith("model.multi_modal_projector."):
        return "audio." + name.removeprefix("model.")  # the map's audio projector names
    return None


def _expected(model: AudioInput) -> dict[str, tuple[int, ...]]:
    """Weight shapes by GGUF name (the convolutions, conv_out, the projector's maps)."""
    hidden, channels = _a(model, "hidden_size"), _a(model, "downsample_hidden_size")
    freq = _a(model, "num_mel_bins")
    for _ in range(3):  # 3 x 3 kernels, stride 2, padding 1
        freq = (freq - 1) // 2 + 1
    return {
        "a.conv2d.1.weight": (channels, 1, 3, 3),
        "a.conv2d.2.weight": (channels, channels, 3, 3),
        "a.conv2d.3.weight": (channels, channels, 3, 3),
        "a.conv_out.weight": (hidden, channels * freq),
        "mm.a.mlp.1.weight": (hidden, hidden),
        # mtmd's rows are the projector's output: the language model's width
        "mm.a.mlp.2.weight": (model.n_embd_text, hidden),
    }


def plan(model: AudioInput) -> list[PlannedTensor]:
    _check(model)
    ckpt = model.ckpt
    hidden, ffn = _a(model, "hidden_size"), _a(model, "intermediate_size")
    by_kind = {
        _T.A_ENC_ATTN_Q: (hidden, hidden),
        _T.A_ENC_ATTN_K: (hidden, hidden),
        _T.A_ENC_ATTN_V: (hidden, hidden),
        _T.A_ENC_OUTPUT: (hidden, hidden),
        _T.A_ENC_FFN_UP: (ffn, hidden),
        _T.A_ENC_FFN_DOWN: (hidden, ffn),
    }

    def planned(source: str, name: str, kind: _T, shape: tuple[int, ...]) -> PlannedTensor:
        if kind == _T.A_ENC_CONV2D and source.endswith(".bias"):  # one per output channel
            out = (shape[0], 1, 1)
            load = lambda: ckpt.load_f32(source).reshape(out)  # noqa: E731
            return PlannedTensor(name, out, load, (source,), True)
        if kind in (_T.A_ENC_CONV2D, _T.A_ENC_CONV_OUT):  # F16 whatever the file's type
            load = lambda: ckpt.load_f32(source).astype(np.float16)  # noqa: E731
            return PlannedTensor(name, shape, load, (source,), qtype=_Q.F16)
        keep = len(shape) <= 1
        return PlannedTensor(name, shape, StoredTensor(ckpt, source), (source,), keep)

    n_block = max(_a(model, "num_hidden_layers"), 4)  # conv2d 3 is numbered as a block
    plans = plan_tower(
        model, "qwen3a", n_block, _source_name, by_kind, REQUIRED, planned, _expected(model)
    )
    pos_name = gguf.TENSOR_NAMES[_T.A_ENC_EMBD_POS] + ".weight"
    pos = PlannedTensor(
        pos_name, (POSITIONS, hidden), lambda: sinusoids(POSITIONS, hidden), (), True
    )
    return [*plans, pos]
