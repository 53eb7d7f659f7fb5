"""Write planned tensors to a GGUF file, one tensor in memory at a time, atomically.

Output types f32/f16/bf16/q8_0 are encoded here (gguf-py's quants for bf16 and q8_0); the
others go through llama.cpp's quantizer from a temporary F16 or BF16 file. As in llama.cpp,
1-D tensors (norms, biases) stay F32, and q8_0 falls back to F16 for rows not divisible by the
32-element block. A tensor the checkpoint already stores quantized (gpt-oss's MXFP4 experts)
is written as is whatever the outtype, as llama.cpp's converter does.

Tensors are converted and written in blocks of `BLOCK` elements, by a few threads (numpy
releases the GIL in its loops, the file write in its syscall) while this one writes, in
order. A tensor whose loader is a `StoredTensor` (no transform) is read from the checkpoint
block by block and converted straight from its stored dtype: memory is bounded by the blocks
in flight, not by the largest tensor. Any other tensor is loaded whole, as its family builds
it, and encoded block by block. The bytes are those of encoding each whole float32 tensor
(tests/convert/test_streaming.py): F32/F16/BF16 are elementwise and Q8_0 works on blocks of
32 values in a row, so each block of a tensor gives the same bytes on its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import gguf
import numpy as np

from llorch import atomic
from llorch.convert.encoding import BLOCK, STREAMED, encode
from llorch.convert.errors import (
    ImatrixRequiredError,
    OutputError,
    OutTypeError,
    ShapeMismatchError,
)
from llorch.convert.families.base import PlannedTensor, StoredTensor
from llorch.detector.safetensors import Checkpoint

_Q = gguf.GGMLQuantizationType
_F = gguf.LlamaFileType
DIRECT: dict[str, tuple[_Q, _F]] = {
    "f32": (_Q.F32, _F.ALL_F32),
    "f16": (_Q.F16, _F.MOSTLY_F16),
    "bf16": (_Q.BF16, _F.MOSTLY_BF16),
    "q8_0": (_Q.Q8_0, _F.MOSTLY_Q8_0),
}


# File types llama.h declares that llama_model_quantize refuses ("invalid output file type":
# llama_ftype_get_default_type in src/llama-quant.cpp has no case for them, and
# tools/quantize/quantize.cpp does not list them).
NOT_QUANTIZABLE = frozenset({"nvfp4"})

# File types whose tensors llama.cpp quantizes to a type that needs an importance matrix
# (tensor_requires_imatrix in src/llama-quant.cpp: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S and
# IQ3_XXS, and Q2_K inside a Q2_K_S file; IQ3_XS and IQ2_M put some tensors in those types).
# tests/convert/test_quant_types.py checks this set against the quantizer itself.
NEEDS_IMATRIX = frozenset(
    {"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "iq3_xs", "q2_k_s"}
)


def quantizer_types() -> dict[str, int]:
    """Types written by llama.cpp's quantizer (everything it knows but the direct ones)."""
    from llorch.convert import llamacpp

    consts = llamacpp.ftype_constants()
    return {k: v for k, v in consts.items() if k not in DIRECT and k not in NOT_QUANTIZABLE}


def all_outtypes() -> list[str]:
    return list(DIRECT) + sorted(quantizer_types())


def check_outtype(outtype: str) -> str:
    name = outtype.lower()
    if name in DIRECT or name in quantizer_types():
        return name
    raise OutTypeError(f"unknown outtype {outtype!r}; valid: {', '.join(all_outtypes())}")


def check_imatrix(outtype: str, has_imatrix: bool) -> None:
    """Refuse, before any work, a type llama.cpp's quantizer would refuse without an imatrix."""
    if outtype in NEEDS_IMATRIX and not has_imatrix:
        raise ImatrixRequiredError(
            f"outtype {outtype!r} needs an importance matrix (llama.cpp refuses "
            f"{', '.join(sorted(NEEDS_IMATRIX))} without one): pass --imatrix FILE.imatrix.gguf "
            "or --imatrix CALIBRATION.txt"
        )


def parse_tensor_types(specs: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """llama-quantize's --tensor-type REGEX=TYPE (parse_tensor_type in tools/quantize/
    quantize.cpp): the regex matched against tensor names, TYPE a ggml type name."""
    from llorch.convert import llamacpp

    if not specs:
        return ()
    types = llamacpp.ggml_type_constants()
    out: list[tuple[str, int]] = []
    for spec in specs:
        pattern, sep, name = spec.partition("=")
        if not sep or not pattern or not name:
            raise OutTypeError(f"tensor type {spec!r}: expected REGEX=TYPE, e.g. ffn_down=q6_k")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise OutTypeError(f"tensor type {spec!r}: bad regex ({exc})") from exc
        if name.lower() not in types:
            raise OutTypeError(
                f"tensor type {spec!r}: unknown type {name!r}; valid: {', '.join(sorted(types))}"
            )
        out.append((pattern, types[name.lower()]))
    return tuple(out)


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


def _stored(plan: PlannedTensor) -> tuple[Checkpoint, str] | None:
    """The checkpoint tensor a plan copies unchanged, when it can be streamed block by block."""
    load = plan.load
    # exactly these classes: a subclass may load differently (LoRA's row probe does)
    if type(load) is not StoredTensor or type(load.ckpt) is not Checkpoint:
        return None
    ref = load.ckpt.refs.get(load.name)
    if ref is None or ref.dtype not in STREAMED or ref.shape != plan.shape:
        return None  # a reshaping plan (mamba2's) loads and checks its shape as before
    return load.ckpt, load.name


class _Whole:
    """A tensor its family builds in memory, loaded once by whichever block needs it first."""

    def __init__(self, plan: PlannedTensor, qtype: _Q) -> None:
        self.plan, self.qtype = plan, qtype
        self.lock = threading.Lock()
        self.data: np.ndarray | None = None

    def get(self) -> np.ndarray:
        with self.lock:
            if self.data is None:
                p = self.plan
                data = p.load()
                want = p.shape if p.qtype is None else _info(p, self.qtype)[0]
                if data.shape != want:
                    raise ShapeMismatchError(
                        f"tensor {p.name} (from {', '.join(p.sources)}): produced shape "
                        f"{list(data.shape)}, planned {list(want)}"
                    )
                self.data = np.ascontiguousarray(data).reshape(-1)
            return self.data


Job = Callable[[], np.ndarray]


def _jobs(plan: PlannedTensor, qtype: _Q) -> Iterator[Job]:
    """The tensor's bytes, in order, as blocks to compute."""
    if plan.qtype is not None:  # already quantized: its bytes as they are, in one piece
        whole = _Whole(plan, qtype)
        yield whole.get
        return
    n = int(np.prod(plan.shape))
    stored = _stored(plan)
    if stored is not None:
        ckpt, name = stored
        dtype, kind = ckpt.stored_dtype(name), ckpt.refs[name].dtype
        for start in range(0, max(n, 1), BLOCK):  # one block at least, even empty
            size = min(BLOCK, n - start)

            def block(start: int = start, size: int = size) -> np.ndarray:
                raw = ckpt.read_into(name, start, np.empty(size, dtype=dtype))
                return encode(raw, qtype, kind)

            yield block
        return
    whole = _Whole(plan, qtype)
    for start in range(0, max(n, 1), BLOCK):

        def part(start: int = start) -> np.ndarray:
            return encode(whole.get()[start : start + BLOCK], qtype)

        yield part


def _threads() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _write_tensors(
    fout: IO[bytes],
    align: int,
    plans: Sequence[PlannedTensor],
    types: Sequence[_Q],
    on_tensor: Callable[[PlannedTensor], None] | None,
) -> None:
    """Each tensor's blocks computed ahead by a thread pool and written in order, laid out
    as gguf-py's GGUFWriter.write_tensor_data does: each tensor starts at an aligned offset
    and is followed by zeros up to the next one."""

    def pad(n: int) -> None:
        if n % align:
            fout.write(bytes(align - n % align))

    def work() -> Iterator[tuple[int, Job]]:
        for i, (p, qtype) in enumerate(zip(plans, types, strict=True)):
            for job in _jobs(p, qtype):
                yield i, job

    threads = _threads()
    pending: deque[tuple[int, Future[np.ndarray]]] = deque()
    jobs = work()
    written, current = 0, 0
    pad(fout.tell())
    with ThreadPoolExecutor(threads, thread_name_prefix="llorch-convert") as pool:
        try:
            while True:
                # a few blocks ahead per thread: they stay small, the threads stay busy
                while len(pending) < 3 * threads:
                    nxt = next(jobs, None)
                    if nxt is None:
                        break
                    pending.append((nxt[0], pool.submit(nxt[1])))
                if not pending:
                    break
                i, future = pending.popleft()
                while current < i:  # every tensor has a block: this steps by one
                    _finish(plans[current], types[current], written, on_tensor, pad)
                    current, written = current + 1, 0
                data = future.result()
                del future
                fout.write(np.ascontiguousarray(data).reshape(-1).view(np.uint8).data)
                written += data.nbytes
                del data
            if plans:
                _finish(plans[current], types[current], written, on_tensor, pad)
        finally:
            for _, future in pending:
                future.cancel()


def _finish(
    plan: PlannedTensor,
    qtype: _Q,
    written: int,
    on_tensor: Callable[[PlannedTensor], None] | None,
    pad: Callable[[int], None],
) -> None:
    nbytes = _info(plan, qtype)[2]
    if written != nbytes:
        raise ShapeMismatchError(
            f"tensor {plan.name} (from {', '.join(plan.sources)}): produced {written} bytes, "
            f"planned {nbytes}"
        )
    pad(written)
    if on_tensor is not None:
        on_tensor(plan)


def write_gguf(
    path: Path,
    writer: gguf.GGUFWriter,
    plans: Sequence[PlannedTensor],
    outtype: str,
    *,
    on_tensor: Callable[[PlannedTensor], None] | None = None,
) -> WriteStats:
    """Header and metadata from `writer` (already filled), then the tensors, streamed."""
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
        assert writer.fout is not None and len(writer.fout) == 1  # one file, never split
        _write_tensors(writer.fout[0], writer.data_alignment, plans, types, on_tensor)
        writer.close()
    except OSError as exc:
        raise OutputError(f"{path}: write failed ({exc.strerror or exc})") from exc
    return WriteStats(n_tensors=len(plans), n_bytes=path.stat().st_size)
