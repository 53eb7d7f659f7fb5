"""Write planned tensors to a GGUF file, one tensor in memory at a time, atomically.

Output types f32/f16/bf16/q8_0 are encoded here (gguf-py's quants for bf16 and q8_0); the
others go through llama.cpp's quantizer from a temporary F16 or BF16 file. As in llama.cpp,
1-D tensors (norms, biases) stay F32, and q8_0 falls back to F16 for rows not divisible by the
32-element block. A tensor the checkpoint already stores quantized (gpt-oss's MXFP4 experts)
is written as is whatever the outtype, as llama.cpp's converter does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from llorch import atomic
from llorch.convert.errors import OutputError, OutTypeError, ShapeMismatchError
from llorch.convert.families.base import PlannedTensor

_Q = gguf.GGMLQuantizationType
_F = gguf.LlamaFileType
DIRECT: dict[str, tuple[_Q, _F]] = {
    "f32": (_Q.F32, _F.ALL_F32),
    "f16": (_Q.F16, _F.MOSTLY_F16),
    "bf16": (_Q.BF16, _F.MOSTLY_BF16),
    "q8_0": (_Q.Q8_0, _F.MOSTLY_Q8_0),
}


def quantizer_types() -> dict[str, int]:
    """Types written by llama.cpp's quantizer (everything it knows but the direct ones)."""
    from llorch.convert import llamacpp

    return {k: v for k, v in llamacpp.ftype_constants().items() if k not in DIRECT}


def all_outtypes() -> list[str]:
    return list(DIRECT) + sorted(quantizer_types())


def check_outtype(outtype: str) -> str:
    name = outtype.lower()
    if name in DIRECT or name in quantizer_types():
        return name
    raise OutTypeError(f"unknown outtype {outtype!r}; valid: {', '.join(all_outtypes())}")


# llama.cpp's quantizer refuses to requantize a quantized tensor; these types keep MXFP4 ones
KEEPS_MXFP4 = frozenset({*DIRECT, "mxfp4_moe"})


def check_prequantized(plans: Sequence[PlannedTensor], outtype: str) -> None:
    """A checkpoint's already quantized tensors go into the output as they are: refuse, before
    any work, an outtype whose llama.cpp quantizer would have to requantize them."""
    stored = sorted({p.qtype.name for p in plans if p.qtype is not None})
    if stored and outtype not in KEEPS_MXFP4:
        raise OutTypeError(
            f"outtype {outtype!r} would requantize the checkpoint's {', '.join(stored)} tensors, "
            f"which llama.cpp refuses; valid for this checkpoint: {', '.join(sorted(KEEPS_MXFP4))}"
        )


def tensor_type(plan: PlannedTensor, outtype: str) -> _Q:
    if plan.qtype is not None:  # already quantized in the checkpoint
        return plan.qtype
    qtype, _ = DIRECT[outtype]
    if plan.keep_f32 or len(plan.shape) <= 1:
        return _Q.F32
    if qtype == _Q.Q8_0 and plan.shape[-1] % gguf.GGML_QUANT_SIZES[_Q.Q8_0][0] != 0:
        return _Q.F16
    return qtype


def encode(data: np.ndarray, qtype: _Q) -> np.ndarray:
    if qtype == _Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == _Q.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)


def _info(plan: PlannedTensor, qtype: _Q) -> tuple[tuple[int, ...], np.dtype, int]:
    if qtype == _Q.F32:
        return plan.shape, np.dtype(np.float32), 4 * int(np.prod(plan.shape))
    if qtype == _Q.F16:
        return plan.shape, np.dtype(np.float16), 2 * int(np.prod(plan.shape))
    byte_shape = gguf.quants.quant_shape_to_byte_shape(plan.shape, qtype)
    return tuple(byte_shape), np.dtype(np.uint8), int(np.prod(byte_shape))


@contextlib.contextmanager
def temp_path(dst: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file next to dst (llorch.atomic: removed on exit, even at interpreter exit)."""
    with contextlib.ExitStack() as stack:
        try:
            path = stack.enter_context(atomic.temp_path(dst, suffix))
        except OSError as exc:
            raise OutputError(f"{dst.parent}: cannot write output here ({exc.strerror})") from exc
        yield path


@dataclass(frozen=True)
class WriteStats:
    n_tensors: int
    n_bytes: int


def write_gguf(
    path: Path,
    writer: gguf.GGUFWriter,
    plans: Sequence[PlannedTensor],
    outtype: str,
    *,
    on_tensor: Callable[[PlannedTensor], None] | None = None,
) -> WriteStats:
    """Header and metadata from `writer` (already filled), then each tensor as it loads."""
    types = [tensor_type(p, outtype) for p in plans]
    for p, qtype in zip(plans, types, strict=True):
        shape, dtype, nbytes = _info(p, qtype)
        writer.add_tensor_info(
            p.name, shape, dtype, nbytes, None if qtype in (_Q.F32, _Q.F16) else qtype
        )
    try:
        writer.open_output_file(path)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for p, qtype in zip(plans, types, strict=True):
            data = p.load()
            want = p.shape if p.qtype is None else _info(p, qtype)[0]
            if data.shape != want:
                raise ShapeMismatchError(
                    f"tensor {p.name} (from {', '.join(p.sources)}): produced shape "
                    f"{list(data.shape)}, planned {list(want)}"
                )
            raw = p.qtype is not None
            writer.write_tensor_data(np.ascontiguousarray(data) if raw else encode(data, qtype))
            del data
            if on_tensor is not None:
                on_tensor(p)
        writer.close()
    except OSError as exc:
        raise OutputError(f"{path}: write failed ({exc.strerror or exc})") from exc
    return WriteStats(n_tensors=len(plans), n_bytes=path.stat().st_size)
