"""What every family module provides, and the helpers they share.

A family module exposes two functions (the `Family` protocol): `write_hparams` puts the
architecture's hyperparameters into the GGUF writer, and `plan` lists the output tensors with
their shapes and a loader that reads and transforms the source tensor(s) when it is called.
Planning reads only headers, so every tensor is mapped (or the conversion fails naming it)
before anything is written, and the writer then holds one tensor in memory at a time. A
loader that is a `StoredTensor` reads one checkpoint tensor unchanged: the writer then streams
that tensor's stored bytes in blocks instead of calling it (no float32 copy of it at all).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gguf
import numpy as np

from llorch.convert.errors import ConfigError, ShapeMismatchError, UnmappedTensorError
from llorch.detector.safetensors import Checkpoint
from llorch.detector.table import TextPart

_T = gguf.MODEL_TENSOR


@dataclass(frozen=True)
class ModelInput:
    folder: Path
    hf_architecture: str
    arch: gguf.MODEL_ARCH
    config: Mapping[str, Any]  # config.json with a nested text_config merged in
    ckpt: Checkpoint
    n_vocab: int
    text_part: TextPart | None  # the table row's: a multimodal wrapper's language model

    def names(self) -> list[str]:
        """What the checkpoint is called: its folder's name, a Hub cache's repository folder
        (`models--Org--Name`, above `snapshots/<commit>`) and config.json's `_name_or_path`."""
        found = [self.folder.name, str(self.config.get("_name_or_path") or "")]
        found += [part for part in self.folder.parts if part.startswith("models--")]
        return [name for name in found if name]

    def text_name(self, name: str) -> str | None:
        """A checkpoint tensor's name as the text model's checkpoints spell it; None for a
        wrapper's part that is not converted."""
        return name if self.text_part is None else self.text_part.tensor_name(name)


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # GGUF tensor name
    shape: tuple[int, ...]  # numpy order (outermost first)
    load: Callable[[], np.ndarray]  # float32 data, transformed
    sources: tuple[str, ...]  # checkpoint tensor names it is built from
    keep_f32: bool = False  # never stored below F32 (norms, biases, rope factors)
    # stored as is whatever the outtype: `load` gives the blocks' bytes (gpt-oss MXFP4 experts)
    qtype: gguf.GGMLQuantizationType | None = None


@dataclass(frozen=True)
class StoredTensor:
    """A loader for one checkpoint tensor as stored, no transform: called, it gives the
    float32 array like any loader; the writer may read `ckpt`'s bytes of `name` instead.
    A family that changes the values wraps or replaces the loader, and the writer then
    calls that loader: only this exact class marks a tensor safe to copy or cast as stored."""

    ckpt: Checkpoint
    name: str

    def __call__(self) -> np.ndarray:
        return self.ckpt.load_f32(self.name)


class Family(Protocol):
    def write_hparams(self, model: ModelInput, writer: gguf.GGUFWriter) -> None: ...

    def plan(self, model: ModelInput) -> list[PlannedTensor]: ...


Transform = Callable[[str, np.ndarray], np.ndarray]


def cfg_int(model: ModelInput, *keys: str, default: int | None = None) -> int:
    for key in keys:
        value = model.config.get(key)
        if isinstance(value, int):
            return value
    if default is not None:
        return default
    raise ConfigError(f"{model.folder / 'config.json'}: missing integer {' / '.join(keys)}")


def cfg_float(model: ModelInput, *keys: str, default: float | None = None) -> float:
    for key in keys:
        value = model.config.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    if default is not None:
        return default
    raise ConfigError(f"{model.folder / 'config.json'}: missing number {' / '.join(keys)}")


def rope_params(model: ModelInput) -> dict[str, Any]:
    """transformers 5 `rope_parameters` (the full-attention layers' when given per layer
    type), or the older `rope_theta` + `rope_scaling` pair."""
    params = dict(model.config.get("rope_scaling") or {})
    params.update(model.config.get("rope_parameters") or {})
    if isinstance(params.get("full_attention"), dict):  # transformers 5, per layer type
        params = dict(params["full_attention"])
    if "rope_theta" not in params and "rope_theta" in model.config:
        params["rope_theta"] = model.config["rope_theta"]
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    return params


def rotary_dims(model: ModelInput, head_dim: int) -> int:
    """Rotated dimensions per head: `partial_rotary_factor` at the top level or (transformers
    5) inside rope_parameters."""
    factor = rope_params(model).get("partial_rotary_factor")
    if factor is None:
        factor = model.config.get("partial_rotary_factor") or 1.0
    return int(head_dim * float(factor))


@dataclass(frozen=True)
class Dims:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int


def _n_head_kv(model: ModelInput, n_head: int) -> int:
    cfg = model.config
    if cfg.get("new_decoder_architecture"):  # Falcon 40B/180B
        return cfg_int(model, "num_kv_heads")
    if cfg.get("multi_query"):  # Falcon 7B
        return 1
    return cfg_int(model, "num_key_value_heads", "num_kv_heads", default=n_head)


def dims(model: ModelInput) -> Dims:
    n_embd = cfg_int(model, "hidden_size", "n_embd", "d_model")
    n_head = cfg_int(model, "num_attention_heads", "n_head")
    head_dim = model.config.get("head_dim") or n_embd // n_head
    return Dims(
        n_layer=cfg_int(model, "num_hidden_layers", "n_layer"),
        n_embd=n_embd,
        n_ff=cfg_int(model, "intermediate_size", "ffn_hidden_size", "n_inner", default=4 * n_embd),
        n_head=n_head,
        n_head_kv=_n_head_kv(model, n_head),
        head_dim=int(head_dim),
    )


def write_common(model: ModelInput, w: gguf.GGUFWriter, *, rms: bool = True) -> Dims:
    d = dims(model)
    w.add_context_length(cfg_int(model, "max_position_embeddings", "n_positions", default=4096))
    w.add_embedding_length(d.n_embd)
    w.add_block_count(d.n_layer)
    w.add_feed_forward_length(d.n_ff)
    w.add_head_count(d.n_head)
    w.add_head_count_kv(d.n_head_kv)
    w.add_key_length(d.head_dim)
    w.add_value_length(d.head_dim)
    w.add_vocab_size(model.n_vocab)
    eps_keys = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps", "norm_epsilon")
    if rms:
        w.add_layer_norm_rms_eps(cfg_float(model, *eps_keys))
    else:
        w.add_layer_norm_eps(cfg_float(model, *eps_keys))
    theta = rope_params(model).get("rope_theta")
    if theta is not None:
        w.add_rope_freq_base(float(theta))
    return d


def expected_shapes(model: ModelInput, d: Dims) -> dict[_T, tuple[int, ...]]:
    """Shapes config.json implies for the common tensors (numpy order)."""
    q, kv = d.n_head * d.head_dim, d.n_head_kv * d.head_dim
    return {
        _T.TOKEN_EMBD: (model.n_vocab, d.n_embd),
        _T.OUTPUT: (model.n_vocab, d.n_embd),
        _T.OUTPUT_NORM: (d.n_embd,),
        _T.ATTN_NORM: (d.n_embd,),
        _T.FFN_NORM: (d.n_embd,),
        _T.ATTN_Q: (q, d.n_embd),
        _T.ATTN_K: (kv, d.n_embd),
        _T.ATTN_V: (kv, d.n_embd),
        _T.ATTN_OUT: (d.n_embd, q),
        _T.FFN_GATE: (d.n_ff, d.n_embd),
        _T.FFN_UP: (d.n_ff, d.n_embd),
        _T.FFN_DOWN: (d.n_embd, d.n_ff),
    }


def map_tensors(
    model: ModelInput,
    *,
    transforms: Mapping[_T, Transform] | None = None,
    expected: Mapping[_T, tuple[int, ...]] | None = None,
    keep_f32: frozenset[_T] = frozenset({_T.FFN_GATE_INP}),
    claimed: frozenset[str] = frozenset(),
    rename: Callable[[str], str | None] | None = None,
) -> list[PlannedTensor]:
    """One output tensor per checkpoint tensor, named through gguf's tensor-name map.

    `claimed` names are built by the family itself (e.g. stacked experts) and skipped here.
    A multimodal wrapper's tensors are looked up by their text-model names, its other parts
    left out (`ModelInput.text_name`); `rename` then maps such a name to the name to look up
    (None: deliberately not converted).
    The MoE router stays F32 as in llama.cpp's converter.
    """
    n_layer = cfg_int(model, "num_hidden_layers", "n_layer")  # also for models without heads
    tmap = gguf.get_tensor_name_map(model.arch, n_layer)
    transforms = transforms or {}
    plans: list[PlannedTensor] = []
    for ref in model.ckpt:
        if ref.name in claimed:
            continue
        lookup_name = model.text_name(ref.name)
        if lookup_name is not None and rename is not None:
            lookup_name = rename(lookup_name)
        if lookup_name is None:
            continue
        found = tmap.get_type_and_name(lookup_name, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise UnmappedTensorError(
                f"{ref.file}: tensor {ref.name!r} {list(ref.shape)} has no GGUF name for "
                f"{gguf.MODEL_ARCH_NAMES[model.arch]}"
            )
        kind, name = found
        want = (expected or {}).get(kind)
        is_bias = ref.name.endswith(".bias")
        if want is not None and not is_bias and ref.shape != want:
            raise ShapeMismatchError(
                f"{ref.file}: tensor {ref.name!r} has shape {list(ref.shape)}, config.json "
                f"implies {list(want)}"
            )
        plans.append(
            PlannedTensor(
                name=name,
                shape=ref.shape,
                load=_loader(model.ckpt, ref.name, transforms.get(kind)),
                sources=(ref.name,),
                keep_f32=kind in keep_f32 or len(ref.shape) <= 1,
            )
        )
    return plans


def _loader(ckpt: Checkpoint, name: str, transform: Transform | None) -> Callable[[], np.ndarray]:
    if transform is None:
        return StoredTensor(ckpt, name)

    def load() -> np.ndarray:
        return transform(name, ckpt.load_f32(name))

    return load


def constant_tensor(name: str, data: np.ndarray) -> PlannedTensor:
    return PlannedTensor(name, data.shape, lambda: data, sources=(), keep_f32=True)
