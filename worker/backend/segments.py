"""A BERT pair's second segment, which llama.cpp's bert graph cannot mark.

BERT adds a token-type row to every token's embedding: row 0 for `[CLS] query [SEP]`, row 1
for `document [SEP]` (transformers' token_type_ids). llama.cpp's bert graph adds row 0 to
every token whatever the pair (src/models/bert.cpp: "token types are hardcoded to zero"), so
a cross-encoder fed token ids scores another input than the one it was trained on (on a tiny
random ms-marco-style checkpoint: logits 0.04 off, well above rounding). The graph takes
input embeddings in place of token ids and adds row 0 and the positions to them itself, so
the pair is fed as rows of token_embd + (token_types[type] - token_types[0]), read here from
the GGUF; llama.cpp then computes exactly what transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from pathlib import Path

import gguf
import numpy as np

from llorch.gguf_header import TensorInfo, read_header

_TOKEN_EMBD = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"
_TOKEN_TYPES = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_TYPES] + ".weight"
_FLOATS = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}


@dataclass(frozen=True)
class _Table:
    """A tensor's rows in the memory-mapped file: floats, or each row's quantized bytes."""

    rows: np.ndarray
    type: gguf.GGMLQuantizationType


class SegmentEmbeddings:
    """The token embedding table and the token-type rows of one GGUF, memory-mapped; rows
    are dequantized only for the tokens asked for."""

    def __init__(self, embd: _Table, types: _Table) -> None:
        self._embd = embd
        rows = _rows(types, np.arange(len(types.rows)))
        # what the second segment adds beyond the row llama.cpp adds to every token
        self._shift = rows - rows[0]

    def rows(self, tokens: np.ndarray, types: np.ndarray) -> np.ndarray:
        """Input embeddings (len(tokens), n_embd), float32, C order."""
        out = _rows(self._embd, tokens) + self._shift[types]
        return np.ascontiguousarray(out, dtype=np.float32)


def open_segments(path: Path) -> SegmentEmbeddings | None:
    """The GGUF's segment rows, or None where it has one token type (nothing to mark). Its
    header is read without the vocabulary (gguf's reader takes seconds over XLM-R's 250,002
    tokens, and this runs before a reranker's first request)."""
    tensors = {t.name: t for t in read_header(path).tensors}
    types = tensors.get(_TOKEN_TYPES)
    if types is None or types.shape[-1] < 2:
        return None
    data = np.memmap(path, dtype=np.uint8, mode="r")
    return SegmentEmbeddings(_table(data, tensors[_TOKEN_EMBD]), _table(data, types))


def _table(data: np.ndarray, tensor: TensorInfo) -> _Table:
    raw = data[tensor.offset : tensor.offset + tensor.n_bytes]
    n_rows = prod(tensor.shape[1:])
    if tensor.type in _FLOATS:
        rows = raw.view(_FLOATS[tensor.type]).reshape(n_rows, tensor.shape[0])
    else:
        rows = raw.reshape(n_rows, tensor.n_bytes // n_rows)
    return _Table(rows, tensor.type)


def _rows(table: _Table, ids: np.ndarray) -> np.ndarray:
    data = np.asarray(table.rows[ids])
    if table.type in _FLOATS:
        return data.astype(np.float32)
    return np.asarray(gguf.quants.dequantize(data, table.type), dtype=np.float32)
