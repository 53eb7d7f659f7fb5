"""Read a SentencePiece `tokenizer.model` without protobuf.

The file is a serialized sentencepiece.ModelProto (sentencepiece_model.proto): field 1 is
the repeated SentencePiece {1: piece, 2: score (float), 3: type (enum)}, field 2 the
TrainerSpec {3: model_type}, field 3 the
NormalizerSpec {2: precompiled_charsmap, 3: add_dummy_prefix, 4: remove_extra_whitespaces}.
The piece type enum (NORMAL=1 ... BYTE=6) has the same values as gguf.TokenType.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from llorch.convert.errors import TokenizerError

UNIGRAM, BPE = 1, 2
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


@dataclass(frozen=True)
class SpmModel:
    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    model_type: int  # TrainerSpec.model_type: 1 UNIGRAM, 2 BPE, 3 WORD, 4 CHAR
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    precompiled_charsmap: bytes


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one message; lengths/bytes as bytes, ints as int."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((field, value))
        elif wire == 1:
            out.append((field, buf[pos : pos + 8]))
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            out.append((field, buf[pos : pos + n]))
            pos += n
        elif wire == 5:
            out.append((field, buf[pos : pos + 4]))
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return out


def read_spm(path: Path) -> SpmModel:
    try:
        top = _fields(path.read_bytes())
    except (ValueError, IndexError) as exc:
        raise TokenizerError(f"{path}: not a SentencePiece model ({exc})") from exc
    pieces: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    add_dummy_prefix, remove_ws, charsmap = True, True, b""
    model_type = UNIGRAM  # the proto default
    for field, value in top:
        if field == 1 and isinstance(value, bytes):
            piece, score, kind = "", 0.0, 1
            for f, v in _fields(value):
                if f == 1 and isinstance(v, bytes):
                    piece = v.decode("utf-8")
                elif f == 2 and isinstance(v, bytes):
                    (score,) = struct.unpack("<f", v)
                elif f == 3 and isinstance(v, int):
                    kind = v
            pieces.append(piece)
            scores.append(score)
            types.append(kind)
        elif field == 2 and isinstance(value, bytes):
            for f, v in _fields(value):
                if f == 3 and isinstance(v, int):
                    model_type = v
        elif field == 3 and isinstance(value, bytes):
            for f, v in _fields(value):
                if f == 2 and isinstance(v, bytes):
                    charsmap = v
                elif f == 3 and isinstance(v, int):
                    add_dummy_prefix = bool(v)
                elif f == 4 and isinstance(v, int):
                    remove_ws = bool(v)
    if not pieces:
        raise TokenizerError(f"{path}: SentencePiece model has no pieces")
    return SpmModel(
        tuple(pieces),
        tuple(scores),
        tuple(types),
        model_type,
        add_dummy_prefix,
        remove_ws,
        charsmap,
    )
