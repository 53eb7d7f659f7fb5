"""XLM-RoBERTa encoders (`XLMRobertaModel`: bge-m3, multilingual-e5) and cross-encoders
(`XLMRobertaForSequenceClassification`: bge-reranker-v2-m3), llama.cpp arch `bert`.

Facts from transformers' modeling_xlm_roberta and llama.cpp's converter (conversion/bert.py,
XLMRobertaModel):
- BERT's graph (convert/families/bert.py): post-norm, GELU, learned absolute positions, a
  token-type table (one type).
- RoBERTa numbers positions from padding_idx + 1 (create_position_ids_from_input_ids), so the
  position table's first pad_token_id + 1 rows are never read for an unpadded input: they are
  cut off, as llama.cpp's converter cuts them, and the context is what is left (514 -> 512).
- The classification checkpoints keep the encoder under `roberta.`; the pooler of the bare
  encoder is not converted (the embeddings do not use it).
- The cross-encoder's head (RobertaClassificationHead) is dense -> tanh -> out_proj on `<s>`:
  llama.cpp's rank pooling with `cls` and `cls_out`, one label. Its pair is `<s> query </s>
  </s> document </s>` (the tokenizer's add_sep: convert/tokenizer/ugm.py).
- The tokenizer is SentencePiece Unigram: llama.cpp's UGM ("t5") vocabulary.
"""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np

from llorch.convert.families import bert
from llorch.convert.families.base import ModelInput, PlannedTensor, cfg_int, dims, map_tensors

_T = gguf.MODEL_TENSOR
_POSITIONS = gguf.TENSOR_NAMES[_T.POS_EMBD] + ".weight"


def _offset(model: ModelInput) -> int:
    return int(model.config.get("pad_token_id", 1)) + 1


def _read_positions(model: ModelInput) -> ModelInput:
    """The model with the context its positions allow once the padding rows are cut."""
    n_ctx = cfg_int(model, "max_position_embeddings") - _offset(model)
    return dataclasses.replace(model, config={**model.config, "max_position_embeddings": n_ctx})


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    bert.write_hparams(_read_positions(model), w)


def _rename(name: str) -> str | None:
    name = name.removeprefix("roberta.")
    if name.endswith("position_ids") or name.startswith("pooler."):
        return None
    return name  # classifier.dense and classifier.out_proj: gguf's cls and cls_out


def plan(model: ModelInput) -> list[PlannedTensor]:
    bert.check(model)
    d = dims(model)
    n_positions = cfg_int(model, "max_position_embeddings")
    expected = bert.expected_shapes(model, type_vocab_size=1)
    if bert.is_cross_encoder(model):
        bert.check_one_label(model)
    plans = map_tensors(model, expected=expected, rename=_rename, keep_f32=bert.KEEP_F32)
    offset = _offset(model)
    out = []
    for p in plans:
        if p.name == _POSITIONS:
            (source,) = p.sources

            def load(source: str = source) -> np.ndarray:
                return np.ascontiguousarray(model.ckpt.load_f32(source)[offset:])

            p = dataclasses.replace(p, shape=(n_positions - offset, d.n_embd), load=load)
        out.append(p)
    return out
