"""NomicBERT encoders for embeddings (`NomicBertModel`, nomic-embed-text v1 / v1.5; llama.cpp
arch `nomic-bert`).

Facts from transformers' models/nomic_bert (5.x; built on its jina_embeddings_v3 layers, and
its conversion_mapping's renames of the released checkpoints' tensors) and llama.cpp's
converter (conversion/bert.py, NomicBertModel) and graph (src/models/bert.cpp):
- Post-norm encoder like BERT, with no position table: embeddings (word + token type 0) ->
  LayerNorm (`emb_ln`), then per layer attention -> add -> LayerNorm (`norm1`), SwiGLU MLP
  (`fc11` up, `fc12` gate: down(up(x) * silu(gate(x)))) -> add -> LayerNorm (`norm2`).
  Attention is one fused `Wqkv`, full rotary (rotate-half: llama.cpp's NEOX rope, which its
  nomic-bert arch uses), base `rotary_emb_base`; no biases in v1 / v1.5.
- Released config.json files use nomic's own names (n_embd, n_layer, n_head, n_inner,
  layer_norm_epsilon, rotary_emb_base, activation_function "swiglu", n_positions 8192 with
  max_trained_positions 2048); transformers' NomicBertConfig uses BERT's (hidden_size, ...,
  rope_parameters, hidden_act "silu"). Both are read. The context is the trained 2048 tokens,
  as llama.cpp's converter writes it ("nomic-embed-text v1 and v1.5 are trained for 2048").
- Refused: prenorm, partial or interleaved rotary, rotary scaling, a causal variant (what
  llama.cpp's converter asserts against), and RMSNorm (its graph's norms are LayerNorms);
  v2-MoE (moe_every_n_layers: llama.cpp's nomic-bert-moe) is not converted here.
- Pooling, Normalize and prompts come from the sentence-transformers config as for BERT.
  nomic-embed-text-v1.5 is Matryoshka-trained (recognised by its name, as its config does not
  say it), and its model card shortens a vector by a layer norm over the whole vector, then
  the leading dimensions, then L2 normalisation: both keys are written for the worker.
"""

from __future__ import annotations

import dataclasses

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
from llorch.convert.sentence_transformers import write_sentence_transformers

_T = gguf.MODEL_TENSOR
SWIGLU = ("swiglu", "silu")
MATRYOSHKA_NAMES = ("nomic-embed-text-v1.5",)


def _normalised(model: ModelInput) -> ModelInput:
    """The model with nomic's config names read as the ones write_common reads."""
    cfg = dict(model.config)
    if "n_positions" in cfg and "max_position_embeddings" not in cfg:
        cfg["max_position_embeddings"] = cfg.get("max_trained_positions", cfg["n_positions"])
    if "rotary_emb_base" in cfg and "rope_theta" not in cfg:
        cfg["rope_theta"] = cfg["rotary_emb_base"]
    return dataclasses.replace(model, config=cfg)


def _check(model: ModelInput) -> None:
    cfg, where = model.config, model.folder / "config.json"
    act = cfg.get("activation_function", cfg.get("hidden_act", "swiglu"))
    refusals = {
        "activation_function / hidden_act": act not in SWIGLU,
        "moe_every_n_layers (nomic-embed-text-v2-moe)": bool(cfg.get("moe_every_n_layers")),
        "prenorm": bool(cfg.get("prenorm")),
        "use_rms_norm": bool(cfg.get("use_rms_norm")),
        "causal": bool(cfg.get("causal")),
        "rotary_emb_fraction": cfg.get("rotary_emb_fraction", 1.0) != 1.0,
        "rotary_emb_interleaved": bool(cfg.get("rotary_emb_interleaved")),
        "rotary_emb_scale_base": cfg.get("rotary_emb_scale_base") is not None,
    }
    bad = [name for name, refused in refusals.items() if refused]
    if bad:
        raise ConfigError(
            f"{where}: NomicBertModel with {', '.join(bad)} is not supported (llama.cpp's "
            "nomic-bert graph is post-norm, full-rotary, bidirectional, with a SwiGLU MLP)"
        )


def is_matryoshka(model: ModelInput) -> bool:
    hints = model.names()
    readme = model.folder / "README.md"
    if readme.is_file():
        hints += [
            line for line in readme.read_text(errors="replace").splitlines() if line[:2] == "# "
        ]
    return any(known in hint.lower() for hint in hints for known in MATRYOSHKA_NAMES)


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    model = _normalised(model)
    write_common(model, w, rms=False)
    w.add_causal_attention(False)
    w.add_token_type_count(cfg_int(model, "type_vocab_size", default=2))
    write_sentence_transformers(model.folder, w)
    if is_matryoshka(model):
        w.add_bool(keys.EMBEDDING_MATRYOSHKA, True)
        w.add_bool(keys.EMBEDDING_MATRYOSHKA_LAYER_NORM, True)


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    model = _normalised(model)
    d = dims(model)
    expected = {
        _T.TOKEN_EMBD: (model.n_vocab, d.n_embd),
        _T.TOKEN_TYPES: (cfg_int(model, "type_vocab_size", default=2), d.n_embd),
        _T.TOKEN_EMBD_NORM: (d.n_embd,),
        _T.ATTN_QKV: (3 * d.n_head * d.head_dim, d.n_embd),
        _T.ATTN_OUT: (d.n_embd, d.n_head * d.head_dim),
        _T.ATTN_OUT_NORM: (d.n_embd,),
        _T.FFN_UP: (d.n_ff, d.n_embd),
        _T.FFN_GATE: (d.n_ff, d.n_embd),
        _T.FFN_DOWN: (d.n_embd, d.n_ff),
        _T.LAYER_OUT_NORM: (d.n_embd,),
    }
    # llama.cpp adds the token-type row to F32 activations (as bert.py keeps it F32)
    return map_tensors(model, expected=expected, keep_f32=frozenset({_T.TOKEN_TYPES}))
