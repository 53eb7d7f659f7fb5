"""Voxtral's audio part: the Whisper-style encoder (two 1-D convolutions with GELU, learned
positions, pre-norm LayerNorm layers, a final LayerNorm) and Voxtral's projector (each 4
consecutive encoder frames stacked into one row, two bias-free linear maps with GELU between),
as llama.cpp's clip `voxtral` projector.

Facts from llama.cpp's converter (conversion/ultravox.py `VoxtralWhisperEncoderModel` and the
`WhisperEncoderModel` it extends, MmprojModel in conversion/base.py) and mtmd
(tools/mtmd/clip.cpp, models/whisper-enc.cpp, mtmd-audio.cpp, mtmd.cpp):
- Tensor names from gguf's MMPROJ map (`audio_tower.*`; the projector's `multi_modal_projector.*`
  read as `audio.multi_modal_projector.*`, which the map keeps apart from a vision projector's
  names). `conv2` and `linear_2` are numbered as blocks, so the map is built for at least 3
  of them (llama.cpp's converter fails on an encoder of fewer layers).
- The convolutions' biases become [n, 1] (ggml adds them per channel after the convolution),
  F32; their kernels are F16 whatever the file's type (llama.cpp's converter forces it); the
  position table is F32. The rest: the defaults (1-D tensors F32, others F16 or F32 as the
  file).
- Keys beyond the shared ones: `num_mel_bins`, the LayerNorm epsilon (1e-5: transformers'
  VoxtralEncoder builds its LayerNorms with the default), and the stack factor: the frames
  stacked per projector row, the audio config's intermediate_size over its hidden_size (the
  reshape transformers' get_audio_features does; llama.cpp's converter writes 4, which every
  released Voxtral has).
- mtmd hard-codes what the checkpoint could say otherwise, and such a checkpoint is refused
  rather than run wrong: a Whisper front-end of 16 kHz, 400-sample FFT windows, 160-sample
  hops, chunks of 30 s (3000 mel frames, so 1500 encoder positions), exact GELU in the encoder
  and the projector, no bias on the attention's keys. mtmd puts the `[BEGIN_AUDIO]` token
  before an audio's embeddings (the text model's vocabulary must have it).
"""

from __future__ import annotations

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

# VoxtralEncoderConfig's defaults (transformers), for keys a config.json leaves out
DEFAULTS = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "num_mel_bins": 128,
    "max_source_positions": 1500,
}
LAYER_NORM_EPS = 1e-5
POSITIONS = 1500  # mtmd: 3000 mel frames per chunk, halved by the second convolution
# mtmd's Whisper front-end (clip.cpp) against the preprocessor's keys
FRONT_END = {"sampling_rate": 16000, "n_fft": 400, "hop_length": 160, "chunk_length": 30}
ACTIVATION = "gelu"  # exact GELU: mtmd's gelu_erf
REQUIRED = (_T.A_ENC_CONV1D, _T.A_ENC_EMBD_POS, _T.A_POST_NORM, _T.A_MMPROJ)


def _a(model: AudioInput, key: str) -> int:
    return tower_int(model, key, DEFAULTS[key])


def _where(model: AudioInput) -> str:
    return str(model.folder / "config.json")


def stack_factor(model: AudioInput) -> int:
    hidden, ffn = _a(model, "hidden_size"), _a(model, "intermediate_size")
    if ffn % hidden:
        raise ConfigError(
            f"{_where(model)}: audio_config.intermediate_size {ffn} is not a multiple of "
            f"hidden_size {hidden}: Voxtral's projector reads whole stacked frames"
        )
    return ffn // hidden


def _check(model: AudioInput) -> None:
    """What mtmd's voxtral graph and Whisper front-end hard-code."""
    positions = _a(model, "max_source_positions")
    if positions != POSITIONS:
        raise ConfigError(
            f"{_where(model)}: audio_config.max_source_positions {positions}; llama.cpp's "
            f"voxtral projector reads 30 s chunks, {POSITIONS} positions"
        )
    acts = {
        "audio_config.activation_function": model.audio.get("activation_function", ACTIVATION),
        "projector_hidden_act": model.config.get("projector_hidden_act", ACTIVATION),
    }
    for key, act in acts.items():
        if act != ACTIVATION:
            raise ConfigError(
                f"{_where(model)}: {key} {act!r}; llama.cpp's voxtral projector runs "
                f"{ACTIVATION!r} (exact GELU) only"
            )
    front = {**FRONT_END, "feature_size": _a(model, "num_mel_bins")}
    for key, value in front.items():
        given = model.preprocessor.get(key, value)
        if given != value:
            raise ConfigError(
                f"{model.folder / 'preprocessor_config.json'}: {key} {given!r}; llama.cpp's "
                f"voxtral projector takes {value!r} (mtmd's Whisper features, num_mel_bins)"
            )
    stack_factor(model)


def write_hparams(model: AudioInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    shape = AudioShape.whisper(lambda key: _a(model, key))
    write_audio_tower(w, model, gguf.VisionProjectorType.VOXTRAL, shape)
    w.add_audio_num_mel_bins(_a(model, "num_mel_bins"))
    w.add_audio_attention_layernorm_eps(LAYER_NORM_EPS)
    w.add_audio_stack_factor(stack_factor(model))


def _expected(model: AudioInput) -> dict[str, tuple[int, ...]]:
    """Weight shapes by GGUF name where a kind has several (the two convolutions, the two
    projector maps)."""
    hidden, text = _a(model, "hidden_size"), model.n_embd_text
    return {
        "a.conv1d.1.weight": (hidden, _a(model, "num_mel_bins"), 3),
        "a.conv1d.2.weight": (hidden, hidden, 3),
        "mm.a.mlp.1.weight": (text, stack_factor(model) * hidden),
        "mm.a.mlp.2.weight": (text, text),
    }


def _source_name(name: str) -> str | None:
    if name.startswith("audio_tower."):
        return name
    if name.startswith("multi_modal_projector."):
        return "audio." + name  # the map's name for an audio projector's tensors
    return None


def plan(model: AudioInput) -> list[PlannedTensor]:
    _check(model)
    ckpt = model.ckpt
    hidden, ffn = _a(model, "hidden_size"), _a(model, "intermediate_size")
    by_kind = {
        _T.A_ENC_EMBD_POS: (POSITIONS, hidden),
        _T.A_ENC_ATTN_Q: (hidden, hidden),
        _T.A_ENC_ATTN_K: (hidden, hidden),
        _T.A_ENC_ATTN_V: (hidden, hidden),
        _T.A_ENC_OUTPUT: (hidden, hidden),
        _T.A_ENC_FFN_UP: (ffn, hidden),
        _T.A_ENC_FFN_DOWN: (hidden, ffn),
    }

    def planned(source: str, name: str, kind: _T, shape: tuple[int, ...]) -> PlannedTensor:
        if kind == _T.A_ENC_ATTN_K and source.endswith(".bias"):
            raise ConfigError(
                f"{model.folder}: tensor {source!r}: llama.cpp's voxtral projector has no bias "
                "on the attention's keys"
            )
        if kind == _T.A_ENC_CONV1D and source.endswith(".bias"):  # one per output channel
            load = lambda: ckpt.load_f32(source).reshape(shape[0], 1)  # noqa: E731
            return PlannedTensor(name, (shape[0], 1), load, (source,), True)
        if kind == _T.A_ENC_CONV1D:  # F16 whatever the file's type: given as F16 values
            load = lambda: ckpt.load_f32(source).astype(np.float16)  # noqa: E731
            return PlannedTensor(name, shape, load, (source,), qtype=_Q.F16)
        keep = kind == _T.A_ENC_EMBD_POS or len(shape) <= 1
        return PlannedTensor(name, shape, StoredTensor(ckpt, source), (source,), keep)

    n_block = max(_a(model, "num_hidden_layers"), 3)  # conv 2 and mlp 2 need block id 2
    return plan_tower(
        model, "voxtral", n_block, _source_name, by_kind, REQUIRED, planned, _expected(model)
    )
