"""Read SafeTensors checkpoints lazily: headers first, one memory-mapped tensor at a time.

The format (https://github.com/huggingface/safetensors): 8-byte little-endian header length,
a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
then the data block. numpy has no bfloat16, so BF16 is read as uint16 and widened to float32
by shifting the bits into the high half (bf16 is the top 16 bits of an IEEE float32).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llorch.detector.errors import InvalidFileError, MissingFileError

_NUMPY_DTYPES: Mapping[str, str] = {
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "F64": "<f8",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass(frozen=True)
class TensorRef:
    name: str
    file: Path
    dtype: str  # safetensors dtype string: F32, F16, BF16, ...
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in file
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_header(file: Path) -> dict[str, TensorRef]:
    """Parse one .safetensors header and check every tensor lies inside the file."""
    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise InvalidFileError(f"{file}: truncated safetensors file (no header)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > size - 8:
                raise InvalidFileError(
                    f"{file}: truncated safetensors file (header claims {header_len} bytes, "
                    f"file has {size})"
                )
            header = json.loads(fh.read(header_len))
    except FileNotFoundError as exc:
        raise MissingFileError(f"{file}: file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidFileError(f"{file}: corrupt safetensors header ({exc})") from exc
    base = 8 + header_len
    refs: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        if dtype not in _NUMPY_DTYPES:
            raise InvalidFileError(f"{file}: tensor {name!r} has unsupported dtype {dtype}")
        begin, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        ref = TensorRef(name, file, dtype, shape, base + begin, end - begin)
        expected = ref.n_elements * np.dtype(_NUMPY_DTYPES[dtype]).itemsize
        if ref.nbytes != expected:
            raise InvalidFileError(
                f"{file}: tensor {name!r} has {ref.nbytes} bytes for shape {list(shape)} "
                f"{dtype} (expected {expected})"
            )
        if base + end > size:
            raise InvalidFileError(
                f"{file}: truncated safetensors file (tensor {name!r} ends at byte "
                f"{base + end}, file has {size})"
            )
        refs[name] = ref
    return refs


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise InvalidFileError(f"{index}: not a valid shard index ({exc})") from exc
    if not isinstance(weight_map, dict):
        raise InvalidFileError(f"{index}: not a valid shard index (weight_map is not an object)")
    return weight_map


def _files(folder: Path, weight_map: Mapping[str, str] | None) -> list[Path]:
    if weight_map is not None:
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.is_file():
                raise MissingFileError(f"{f}: shard listed in {INDEX_NAME} is missing")
        return files
    single = folder / SINGLE_NAME
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    raise MissingFileError(
        f"{folder}: no {SINGLE_NAME}, {INDEX_NAME} or *.safetensors files "
        "(only SafeTensors checkpoints are supported; .bin/.pt are not)"
    )


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's .safetensors files: the index's shards, or the single file."""
    index = folder / INDEX_NAME
    return _files(folder, _weight_map(index) if index.is_file() else None)


class Checkpoint:
    """All tensors of a (possibly sharded) checkpoint; loads one at a time. The index and
    every header are read once, here."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        index = folder / INDEX_NAME
        listed = _weight_map(index) if index.is_file() else None
        self.files = _files(folder, listed)
        self.refs: dict[str, TensorRef] = {}
        for f in self.files:
            for name, ref in read_header(f).items():
                if name in self.refs:
                    raise InvalidFileError(f"{f}: tensor {name!r} also in {self.refs[name].file}")
                self.refs[name] = ref
        for name, shard in (listed or {}).items():
            if name not in self.refs:
                raise MissingFileError(f"{folder / shard}: tensor {name!r} listed in index")

    def names(self) -> list[str]:
        return list(self.refs)

    def __contains__(self, name: str) -> bool:
        return name in self.refs

    def __iter__(self) -> Iterator[TensorRef]:
        return iter(self.refs.values())

    def shape(self, name: str) -> tuple[int, ...]:
        return self.refs[name].shape

    def raw(self, name: str) -> np.ndarray:
        """The stored array, memory-mapped (BF16 as uint16)."""
        ref = self.refs[name]
        return np.memmap(
            ref.file,
            dtype=np.dtype(_NUMPY_DTYPES[ref.dtype]),
            mode="r",
            offset=ref.offset,
            shape=ref.shape or (1,),
        ).reshape(ref.shape)

    def stored_dtype(self, name: str) -> np.dtype:
        """The numpy dtype of the stored bytes (BF16 as uint16)."""
        return np.dtype(_NUMPY_DTYPES[self.refs[name].dtype])

    def read_into(self, name: str, start: int, out: np.ndarray) -> np.ndarray:
        """Elements [start, start + out.size) of the flattened stored tensor into `out` (of the
        stored dtype), read with pread: unlike a map, nothing read stays in this process's
        memory once `out` is reused, so a tensor can be streamed in blocks of bounded size."""
        ref = self.refs[name]
        itemsize = out.dtype.itemsize
        fits = start >= 0 and start + out.size <= ref.n_elements
        if out.dtype != self.stored_dtype(name) or not fits or not out.flags.c_contiguous:
            raise ValueError(f"{name}: cannot read {out.size} {out.dtype} from element {start}")
        view = out.reshape(-1).view(np.uint8).data
        fd = os.open(ref.file, os.O_RDONLY)
        try:
            done, offset = 0, ref.offset + start * itemsize
            while done < len(view):
                n = os.preadv(fd, [view[done:]], offset + done)
                if n == 0:
                    raise InvalidFileError(f"{ref.file}: truncated while reading {name!r}")
                done += n
        finally:
            os.close(fd)
        return out

    def load_f32(self, name: str) -> np.ndarray:
        """The tensor as a float32 array in memory (a copy; the map is released)."""
        ref = self.refs[name]
        data = self.raw(name)
        if ref.dtype == "BF16":
            wide = np.empty(ref.shape, dtype=np.uint32)
            wide[...] = data  # widen in place, then shift: one uint32 buffer, no temporaries
            wide <<= 16
            return wide.view(np.float32)
        return np.array(data, dtype=np.float32)

    def dominant_dtype(self) -> str | None:
        counts: dict[str, int] = {}
        for ref in self.refs.values():
            counts[ref.dtype] = counts.get(ref.dtype, 0) + ref.n_elements
        return max(counts, key=lambda k: counts[k]) if counts else None

    def n_parameters(self) -> int:
        """Model parameters: stored elements, but for MXFP4 (gpt-oss's experts) the values the
        bytes hold: `*_blocks` U8 [..., 16] packs two 4-bit values a byte (32 a block) and its
        `*_scales` byte per block is the block's shared exponent, not a parameter."""
        total = 0
        for name, ref in self.refs.items():
            total += ref.n_elements * _values_per_element(self.refs, name)
        return total


def _values_per_element(refs: Mapping[str, TensorRef], name: str) -> int:
    ref = refs[name]
    if ref.dtype != "U8":
        return 1
    if name.endswith("_blocks") and ref.shape[-1:] == (16,):
        scales = refs.get(name.removesuffix("_blocks") + "_scales")
        if scales is not None and scales.shape == ref.shape[:-1]:
            return 2  # MXFP4 (transformers' integrations/mxfp4.py): two E2M1 codes a byte
    if name.endswith("_scales"):
        blocks = refs.get(name.removesuffix("_scales") + "_blocks")
        if blocks is not None and blocks.dtype == "U8" and blocks.shape == (*ref.shape, 16):
            return 0  # the E8M0 exponent of each block of 32 values
    return 1


def checkpoint_summary(folder: Path) -> tuple[int | None, str | None]:
    """(parameter count, dominant dtype) from headers only; (None, None) without weights."""
    try:
        ckpt = Checkpoint(folder)
    except MissingFileError:
        return None, None
    return ckpt.n_parameters(), ckpt.dominant_dtype()
