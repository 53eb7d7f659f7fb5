"""BERT encoders for embeddings (`BertModel`, llama.cpp arch `bert`).

Facts from transformers' modeling_bert and llama.cpp's src/models/bert.cpp and its converter
(BertModel, TextModel._try_set_pooling_type):
- Post-norm encoder: embeddings (word + position + token type 0) -> LayerNorm, then per layer
  attention -> add -> LayerNorm, GELU MLP -> add -> LayerNorm; every linear has a bias.
  llama.cpp always feeds token type 0 (sentence A), so the token-type table is written whole
  and its count (`type_vocab_size`) goes into the GGUF.
- Attention is bidirectional (`bert.attention.causal = false`), positions are absolute
  (learned table of max_position_embeddings rows, which is also the context length).
- The pooling type comes from the sentence-transformers config: the Pooling module named in
  modules.json and its config.json (mean, cls or last token). llama.cpp cannot do max or
  mean-sqrt-len pooling, nor apply Dense modules after pooling; those are refused. A
  Normalize module is left to the caller (llama.cpp returns unnormalised pooled vectors).
- Not converted: the pooler (a tanh head the embeddings do not use), `position_ids` buffers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf

from llorch import keys
from llorch.convert.errors import ConfigError
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_int,
    dims,
    map_tensors,
    write_common,
)

_T = gguf.MODEL_TENSOR
POOLING = {
    "mean": gguf.PoolingType.MEAN,
    "cls": gguf.PoolingType.CLS,
    "lasttoken": gguf.PoolingType.LAST,
}
# Pooling/config.json flags, in sentence-transformers' order of precedence
POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_lasttoken": "lasttoken",
}
UNSUPPORTED_FLAGS = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
# sentence-transformers modules whose effect llama.cpp's embeddings reproduce (or leave to the
# caller, like Normalize); anything else changes the vectors.
KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")
GELU = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")
NOT_CONVERTED = ("pooler.", "cls.")
# llama.cpp adds these rows to F32 activations with ops that have no F16 form (as its own
# converter, it keeps them F32)
KEEP_F32 = frozenset({_T.POS_EMBD, _T.TOKEN_TYPES})


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc


def pooling_type(folder: Path) -> gguf.PoolingType | None:
    """The sentence-transformers pooling of the folder, or None without modules.json."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return None
    modules = _read(modules_path)
    pooling_dir = None
    for mod in modules if isinstance(modules, list) else []:
        kind = str(mod.get("type", "")).rsplit(".", 1)[-1]
        if kind not in KNOWN_MODULES:
            raise ConfigError(
                f"{modules_path}: sentence-transformers module {mod.get('type')!r} is not "
                f"supported (llama.cpp's embeddings reproduce {', '.join(KNOWN_MODULES)})"
            )
        if kind == "Pooling":
            pooling_dir = folder / str(mod.get("path", ""))
    if pooling_dir is None:
        return None
    config_path = pooling_dir / "config.json"
    config = _read(config_path)
    for flag in UNSUPPORTED_FLAGS:
        if config.get(flag):
            raise ConfigError(f"{config_path}: {flag} is not supported by llama.cpp")
    modes = [mode for flag, mode in POOLING_FLAGS.items() if config.get(flag)]
    mode = config.get("pooling_mode") if not modes else modes[0]
    if len(modes) > 1 or mode not in POOLING:
        raise ConfigError(
            f"{config_path}: pooling {modes or mode!r} is not supported; llama.cpp pools by "
            f"one of {', '.join(POOLING)}"
        )
    return POOLING[str(mode)]


def write_sentence_transformers(folder: Path, w: gguf.GGUFWriter) -> None:
    """The pooling type, and whether the pooled vector is normalised (a Normalize module:
    llama.cpp returns it unnormalised, so the worker does it), from the sentence-transformers
    config; nothing without modules.json."""
    pooling = pooling_type(folder)
    if pooling is not None:
        w.add_pooling_type(pooling)
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        modules = _read(modules_path)
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        w.add_bool(keys.EMBEDDING_NORMALIZE, "Normalize" in kinds)


def _check(model: ModelInput) -> None:
    where = model.folder / "config.json"
    position = model.config.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ConfigError(
            f"{where}: position_embedding_type {position!r} is not supported (llama.cpp's bert "
            "graph adds absolute position embeddings)"
        )
    act = model.config.get("hidden_act", "gelu")
    if act not in GELU:
        raise ConfigError(f"{where}: hidden_act {act!r} is not supported (llama.cpp uses GELU)")
    if model.config.get("is_decoder"):
        raise ConfigError(f"{where}: a BERT decoder (is_decoder=true) is not supported")


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    write_common(model, w, rms=False)
    w.add_causal_attention(False)
    w.add_token_type_count(cfg_int(model, "type_vocab_size", default=2))
    write_sentence_transformers(model.folder, w)


def _rename(name: str) -> str | None:
    if name.endswith("position_ids") or name.startswith(NOT_CONVERTED):
        return None
    if name.startswith("bert."):
        name = name[len("bert.") :]
    if name.endswith(".gamma"):  # TensorFlow-era LayerNorm names
        return name[: -len(".gamma")] + ".weight"
    if name.endswith(".beta"):
        return name[: -len(".beta")] + ".bias"
    return name


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    d = dims(model)
    n_ctx = cfg_int(model, "max_position_embeddings")
    expected = {
        _T.TOKEN_EMBD: (model.n_vocab, d.n_embd),
        _T.POS_EMBD: (n_ctx, d.n_embd),
        _T.TOKEN_TYPES: (cfg_int(model, "type_vocab_size", default=2), d.n_embd),
        _T.ATTN_Q: (d.n_embd, d.n_embd),
        _T.ATTN_K: (d.n_embd, d.n_embd),
        _T.ATTN_V: (d.n_embd, d.n_embd),
        _T.ATTN_OUT: (d.n_embd, d.n_embd),
        _T.FFN_UP: (d.n_ff, d.n_embd),
        _T.FFN_DOWN: (d.n_embd, d.n_ff),
        _T.TOKEN_EMBD_NORM: (d.n_embd,),
        _T.ATTN_OUT_NORM: (d.n_embd,),
        _T.LAYER_OUT_NORM: (d.n_embd,),
    }
    return map_tensors(model, expected=expected, rename=_rename, keep_f32=KEEP_F32)
