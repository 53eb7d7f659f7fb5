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
- Cross-encoders (`BertForSequenceClassification`, ms-marco-MiniLM rerankers): the score is
  classifier(tanh(pooler.dense(h_CLS))) (transformers' BertPooler then the classifier). That is
  llama.cpp's rank pooling with `cls` (dense + tanh) and `cls_out`, so the pooler converts as
  `cls` and the classifier as `cls_out`; the GGUF's pooling type is rank. llama.cpp's own
  converter drops the pooler (conversion/bert.py), which changes every score. One label only:
  a reranker scores a pair with one logit.
"""

from __future__ import annotations

import gguf

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
GELU = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")
NOT_CONVERTED = ("pooler.", "cls.")
# llama.cpp adds these rows to F32 activations with ops that have no F16 form (as its own
# converter, it keeps them F32)
KEEP_F32 = frozenset({_T.POS_EMBD, _T.TOKEN_TYPES})


def check(model: ModelInput) -> None:
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


def is_cross_encoder(model: ModelInput) -> bool:
    return model.hf_architecture.endswith("ForSequenceClassification")


def check_one_label(model: ModelInput) -> None:
    """A cross-encoder's score is its single logit; more labels are a classifier."""
    labels = model.config.get("id2label")
    # transformers' PretrainedConfig: two labels when config.json names none
    n_labels = len(labels) if labels else int(model.config.get("num_labels", 2))
    if n_labels != 1:
        raise ConfigError(
            f"{model.folder / 'config.json'}: {model.hf_architecture} with {n_labels} labels "
            "is a classifier, not a reranker; only one label (a relevance logit) is supported"
        )


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    check(model)
    write_common(model, w, rms=False)
    w.add_causal_attention(False)
    w.add_token_type_count(cfg_int(model, "type_vocab_size", default=2))
    if is_cross_encoder(model):
        check_one_label(model)
        w.add_pooling_type(gguf.PoolingType.RANK)
    else:
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


def _rename_cross_encoder(name: str) -> str | None:
    # gguf's names for llama.cpp's rank head: `classifier.dense` is cls, `classifier.out_proj`
    # is cls_out
    if name.startswith("bert.pooler.dense."):
        return "classifier.dense." + name.rsplit(".", 1)[-1]
    if name.startswith("classifier."):
        return "classifier.out_proj." + name.rsplit(".", 1)[-1]
    return _rename(name)


def plan(model: ModelInput) -> list[PlannedTensor]:
    check(model)
    expected = expected_shapes(model, type_vocab_size=2)
    rename = _rename
    if is_cross_encoder(model):
        check_one_label(model)
        rename = _rename_cross_encoder
    return map_tensors(model, expected=expected, rename=rename, keep_f32=KEEP_F32)


def expected_shapes(model: ModelInput, *, type_vocab_size: int) -> dict[gguf.MODEL_TENSOR, tuple]:
    """The shapes of a BERT-style encoder's tensors (and a cross-encoder's head), GGUF order;
    `type_vocab_size` when the config does not say."""
    d = dims(model)
    n_ctx = cfg_int(model, "max_position_embeddings")
    expected = {
        _T.TOKEN_EMBD: (model.n_vocab, d.n_embd),
        _T.POS_EMBD: (n_ctx, d.n_embd),
        _T.TOKEN_TYPES: (cfg_int(model, "type_vocab_size", default=type_vocab_size), d.n_embd),
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
    if is_cross_encoder(model):
        expected |= {_T.CLS: (d.n_embd, d.n_embd), _T.CLS_OUT: (1, d.n_embd)}
    return expected
