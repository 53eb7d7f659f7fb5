"""A GGUF file's metadata and tensor table, read without its vocabulary.

gguf's GGUFReader builds numpy views of every item of every array as it opens a file, so a
262,144-token vocabulary (Gemma 3) costs it 5-14 s on two cores, and the worker sizes a model
from its header before each load of a several-models set-up. This reads the same header
(GGUF v2/v3, little-endian: what llama.cpp writes; gguf-py's docs/gguf.md for the layout) and
skips string arrays, keeping only their length: Gemma 3's header in well under a second.
It also says where each scalar or string value lies, so that `rewrite_values` can change one
in place (the quality of a quantized file, known only after it is written) without gguf's
reader (1.5 s for a 32,000-token vocabulary, for four numbers).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from math import prod
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

_MAGIC = b"GGUF"
_SCALARS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}


@dataclass(frozen=True)
class StringArray:
    """An array of strings, of which only the length is kept (a vocabulary, its merges)."""

    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF's order: the row length first
    type: GGMLQuantizationType
    n_bytes: int
    offset: int = 0  # of its first byte in the file


@dataclass(frozen=True)
class ValueSpan:
    """Where a scalar or string value lies in the file: its type, first byte and length (a
    string's bytes, after its length)."""

    kind: GGUFValueType
    offset: int
    size: int


@dataclass(frozen=True)
class GGUFHeader:
    # Scalars as Python values, numeric and boolean arrays as tuples, string arrays as
    # StringArray.
    fields: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    spans: dict[str, ValueSpan] = field(default_factory=dict)  # scalar and string keys

    def int_field(self, key: str, default: int = 0) -> int:
        """An integer key's value; an array's last item (as gguf's reader reads a per-layer
        key); `default` when absent."""
        value = self.fields.get(key)
        if value is None:
            return default
        if isinstance(value, tuple):
            return int(value[-1]) if value else default
        return int(value)


class GGUFHeaderError(ValueError):
    pass


def read_header(path: Path | str, strings: Callable[[str], bool] = lambda key: False) -> GGUFHeader:
    """The header of `path`; the string arrays of the keys `strings` accepts are read whole
    (as tuples of str), the others as their length."""
    with open(path, "rb") as file:
        try:
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _Parser(data, strings).header()
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
            raise GGUFHeaderError(f"{path}: not a readable GGUF header ({exc})") from exc


class _Parser:
    def __init__(self, data: mmap.mmap, strings: Callable[[str], bool]) -> None:
        self._data = data
        self._at = 0
        self._strings = strings

    def _take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self._data, self._at)
        self._at += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._take("Q")
        text = bytes(self._data[self._at : self._at + n])
        if len(text) != n:
            raise ValueError("a string runs past the end of the file")
        self._at += n
        return text.decode("utf-8")

    def header(self) -> GGUFHeader:
        if self._data[:4] != _MAGIC:
            raise ValueError("no GGUF magic")
        self._at = 4
        version = self._take("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (2 and 3 are read)")
        n_tensors, n_fields = self._take("Q"), self._take("Q")
        fields, spans = {}, {}
        for _ in range(n_fields):
            key = self._string()
            kind = GGUFValueType(self._take("I"))
            start = self._at
            fields[key] = self._value(kind, self._strings(key))
            if kind == GGUFValueType.STRING:  # its length (8 bytes), then its bytes
                spans[key] = ValueSpan(kind, start + 8, self._at - start - 8)
            elif kind in _SCALARS:
                spans[key] = ValueSpan(kind, start, self._at - start)
        tensors = tuple(self._tensor() for _ in range(n_tensors))
        # the data section starts at the next multiple of the alignment (gguf-py's docs)
        align = int(fields.get("general.alignment", 32))
        start = -(-self._at // align) * align
        tensors = tuple(replace(t, offset=start + t.offset) for t in tensors)
        return GGUFHeader(fields, tensors, spans)

    def _value(self, kind: GGUFValueType, whole: bool = True) -> Any:
        if kind == GGUFValueType.STRING:
            return self._string()
        if kind in _SCALARS:
            return self._take(_SCALARS[kind])
        if kind != GGUFValueType.ARRAY:
            raise ValueError(f"value type {kind}")
        item = GGUFValueType(self._take("I"))
        count = self._take("Q")
        if item == GGUFValueType.STRING and whole:
            return tuple(self._string() for _ in range(count))
        if item == GGUFValueType.STRING:
            for _ in range(count):  # only the lengths are read
                self._at += 8 + struct.unpack_from("<Q", self._data, self._at)[0]
            if self._at > len(self._data):
                raise ValueError("a string array runs past the end of the file")
            return StringArray(count)
        if item in _SCALARS:
            fmt = f"<{count}{_SCALARS[item]}"
            values = struct.unpack_from(fmt, self._data, self._at)
            self._at += struct.calcsize(fmt)
            return values
        return tuple(self._value(item) for _ in range(count))  # arrays of arrays

    def _tensor(self) -> TensorInfo:
        name = self._string()
        n_dims = self._take("I")
        shape = tuple(self._take("Q") for _ in range(n_dims))
        kind = GGMLQuantizationType(self._take("I"))
        offset = self._take("Q")  # in the data section
        block, size = GGML_QUANT_SIZES[kind]
        return TensorInfo(name, shape, kind, prod(shape) * size // block, offset)


def rewrite_values(path: Path | str, values: Mapping[str, str | int | float]) -> None:
    """The values of scalar or string keys `path` already has, written over in place: a
    number in the key's own type, a string of the same length in bytes (so the header keeps
    its size and the tensors their place). Raises GGUFHeaderError, writing nothing, when a
    key is missing, an array, or a string of another length."""
    spans = read_header(path).spans
    patches = []
    for key, value in values.items():
        span = spans.get(key)
        if span is None:
            raise GGUFHeaderError(f"{path}: no scalar or string key {key} to rewrite")
        if span.kind == GGUFValueType.STRING:
            if not isinstance(value, str) or len(raw := value.encode()) != span.size:
                raise GGUFHeaderError(
                    f"{path}: {key} is a string of {span.size} bytes, not {value!r}"
                )
        elif isinstance(value, str):
            raise GGUFHeaderError(f"{path}: {key} is a number, not {value!r}")
        else:
            raw = struct.pack("<" + _SCALARS[span.kind], value)
        patches.append((span.offset, raw))
    with open(path, "r+b") as file, mmap.mmap(file.fileno(), 0) as data:
        for offset, raw in patches:
            data[offset : offset + len(raw)] = raw
        data.flush()
