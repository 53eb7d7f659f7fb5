"""Jina Embeddings v3's encoder (`JinaEmbeddingsV3Model`, transformers' port of
jinaai/jina-embeddings-v3; llama.cpp arch `jina-bert-v3`), without its task LoRA adapters.

Facts from transformers' models/jina_embeddings_v3 (5.x: the model, and conversion_mapping's
renames, which save_pretrained writes back) and llama.cpp's converter (conversion/bert.py,
XLMRobertaModel with `lora_adaptations`) and graph (src/models/bert.cpp, jina-bert-v3.cpp):
- XLM-RoBERTa's post-norm encoder with rotary positions instead of a position table:
  embeddings (word + token type 0) -> LayerNorm (`emb_ln`), then per layer attention (one
  fused `mixer.Wqkv` with bias, full rotary, rotate-half: llama.cpp's NEOX rope, which its
  jina-bert-v3 arch uses, positions from 0, base rope_theta 20000) -> add -> LayerNorm
  (`norm1`), GELU MLP (`fc1`, `fc2`) -> add -> LayerNorm (`norm2`). The pooler is not used for
  embeddings and is not converted.
- The context is max_position_embeddings less XLM-R's pad_token_id + 1, as llama.cpp's
  converter writes it (8194 -> 8192); rotary positions have no table to cut.
- The tokenizer is XLM-R's (convert/tokenizer/ugm.py). llama.cpp strips the whitespace before
  `<mask>` for this arch (llama-vocab.cpp), as XLM-R's tokenizer.json marks it lstrip.
- Refused: the original XLMRobertaLoRA checkpoint's task adapters (`lora_adaptations`,
  `.parametrizations.` tensors: llama.cpp's converter writes each as a GGUF LoRA; transformers'
  port has no LoRA to compare them with), rotary scaling, another activation.
- Pooling, Normalize and prompts come from the sentence-transformers config (mean pooling).
"""

from __future__ import annotations

import dataclasses

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_int,
    dims,
    map_tensors,
    rope_params,
    write_common,
)
from llorch.convert.sentence_transformers import write_sentence_transformers

_T = gguf.MODEL_TENSOR
GELU = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def _check(model: ModelInput) -> None:
    cfg, where = model.config, model.folder / "config.json"
    rope_type = rope_params(model).get("rope_type", "default")
    refusals = {
        f"hidden_act {cfg.get('hidden_act')!r}": cfg.get("hidden_act", "gelu") not in GELU,
        "lora_adaptations (task LoRA adapters)": bool(cfg.get("lora_adaptations")),
        f"rope_type {rope_type!r}": rope_type != "default",
    }
    bad = [name for name, refused in refusals.items() if refused]
    if bad:
        raise ConfigError(
            f"{where}: {model.hf_architecture} with {', '.join(bad)} is not supported (llama.cpp's "
            "jina-bert-v3 graph is XLM-R's with GELU and plain rotary positions; adapters are "
            "not converted)"
        )


def _positions(model: ModelInput) -> ModelInput:
    n_ctx = cfg_int(model, "max_position_embeddings") - int(model.config.get("pad_token_id", 1)) - 1
    return dataclasses.replace(model, config={**model.config, "max_position_embeddings": n_ctx})


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    write_common(_positions(model), w, rms=False)
    w.add_causal_attention(False)
    w.add_token_type_count(cfg_int(model, "type_vocab_size", default=1))
    write_sentence_transformers(model.folder, w)


def _rename(name: str) -> str | None:
    name = name.removeprefix("roberta.")
    if ".parametrizations." in name:
        raise ConfigError(
            f"tensor {name!r}: a LoRA-parametrized weight (jina-embeddings-v3's task adapters) "
            "is not supported; convert transformers' JinaEmbeddingsV3Model checkpoint"
        )
    if name.endswith("position_ids") or name.startswith("pooler."):
        return None
    return name


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    d = dims(model)
    width = d.n_head * d.head_dim
    expected = {
        _T.TOKEN_EMBD: (model.n_vocab, d.n_embd),
        _T.TOKEN_TYPES: (cfg_int(model, "type_vocab_size", default=1), d.n_embd),
        _T.TOKEN_EMBD_NORM: (d.n_embd,),
        _T.ATTN_QKV: (3 * width, d.n_embd),
        _T.ATTN_OUT: (d.n_embd, width),
        _T.ATTN_OUT_NORM: (d.n_embd,),
        _T.FFN_UP: (d.n_ff, d.n_embd),
        _T.FFN_DOWN: (d.n_embd, d.n_ff),
        _T.LAYER_OUT_NORM: (d.n_embd,),
    }
    # llama.cpp adds the token-type row to F32 activations (as bert.py keeps it F32)
    keep = frozenset({_T.TOKEN_TYPES})
    return map_tensors(model, expected=expected, rename=_rename, keep_f32=keep)
