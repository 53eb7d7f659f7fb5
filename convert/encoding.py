"""Tensor values to GGUF bytes, a block at a time: F32, F16, BF16 and Q8_0 (the types the
converter writes itself; llama.cpp's quantizer makes the others from an F16 or BF16 file).

Each function gives the bytes gguf-py gives for the same float32 values, faster and without a
float32 copy of a stored BF16 tensor (tests/convert/test_streaming.py checks every BF16 and
F16 code and Q8_0's edge blocks against gguf-py).
"""

from __future__ import annotations

import functools
import threading

import gguf
import numpy as np

_Q = gguf.GGMLQuantizationType

# Elements per block: 256 Ki (0.5-1 MiB) stay in cache through a conversion's several
# passes; a multiple of Q8_0's 32-value block.
BLOCK = 1 << 18
STREAMED = frozenset({"F32", "F16", "BF16"})  # stored dtypes read block by block


def encode(data: np.ndarray, qtype: _Q, stored: str | None = None) -> np.ndarray:
    """`data` in `qtype`'s bytes: float values (the whole tensor or a block of it, flattened
    for Q8_0 too), or with `stored` (a safetensors dtype) a block of a checkpoint's stored
    values (BF16 as uint16), which give the bytes their float32 values would give."""
    if stored == "BF16":
        return _from_bf16(data, qtype)
    if stored == "F16" and qtype == _Q.F16:
        return data  # F16 -> F32 -> F16 is exact for every code (test_streaming.py)
    if qtype == _Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == _Q.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    f32 = np.ascontiguousarray(data, dtype=np.float32)
    if qtype == _Q.Q8_0:
        return _q8_0(f32.reshape(-1, gguf.GGML_QUANT_SIZES[_Q.Q8_0][0]))
    return gguf.quants.quantize(f32, qtype)


_local = threading.local()


def _scratch(name: str, n: int, dtype: type) -> np.ndarray:
    """A buffer of n elements reused by this thread: the passes over a block then allocate
    nothing (freeing and allocating blocks of this size costs page faults every time)."""
    if n > BLOCK:
        return np.empty(n, dtype=dtype)  # a whole tensor: not kept
    key = f"{name}:{np.dtype(dtype).str}"
    bufs: dict[str, np.ndarray] = _local.__dict__.setdefault("bufs", {})
    if key not in bufs:
        bufs[key] = np.empty(BLOCK, dtype=dtype)
    return bufs[key][:n]


def _from_bf16(bits: np.ndarray, qtype: _Q) -> np.ndarray:
    """BF16 (as uint16) to `qtype` without a float32 copy of the tensor: bf16 is the upper
    half of a float32, so a block is widened into a reused buffer and cast from there."""
    bits = bits.reshape(-1)
    if qtype == _Q.BF16:
        # gguf-py's F32->BF16 (ggml_compute_fp32_to_bf16) rounds nothing here, as the low
        # half is zero, and only sets the quiet bit (0x40) of a NaN
        out = bits.copy()
        nan = (bits & 0x7FFF) > 0x7F80
        if nan.any():
            out[nan] |= 0x40
        return out
    if qtype == _Q.F16:
        return _bf16_to_f16(bits)
    wide = _scratch("wide", bits.size, np.uint32)
    np.copyto(wide, bits)
    wide <<= 16
    f32 = wide.view(np.float32)
    if qtype == _Q.F32:
        return f32.copy()
    if qtype == _Q.Q8_0:
        return _q8_0(f32.reshape(-1, gguf.GGML_QUANT_SIZES[_Q.Q8_0][0]))
    return gguf.quants.quantize(f32, qtype)


@functools.cache
def _bf16_f16_table() -> np.ndarray:
    """F16 bits of every BF16 code through float32, by numpy's own cast (what astype gives)."""
    wide = np.arange(1 << 16, dtype=np.uint32) << 16
    with np.errstate(over="ignore"):
        return wide.view(np.float32).astype(np.float16).view(np.uint16)


# BF16 codes whose exponent F16 holds as a normal number (2^-14 <= |x| < 2^16): the F16 code
# is the same sign, the exponent rebased (127 -> 15) and the 7 mantissa bits shifted up to 10,
# exact. The rest (F16 subnormals, overflow to inf, NaN) take the table's value.
_F16_LOW, _F16_HIGH = 113 << 7, 143 << 7  # |bits| range, exponent 113..142


def _bf16_to_f16(bits: np.ndarray) -> np.ndarray:
    """numpy's BF16->F32->F16 cast, bit for bit, in integer passes (about 5x faster than the
    float32->float16 cast, which numpy does without SIMD)."""
    mag = _scratch("mag", bits.size, np.uint16)
    np.bitwise_and(bits, np.uint16(0x7FFF), out=mag)
    out = np.empty(bits.size, dtype=np.uint16)
    np.subtract(mag, np.uint16(_F16_LOW - (1 << 7)), out=out)  # exponent - 112 (may wrap)
    out <<= 3
    sign = _scratch("sign", bits.size, np.uint16)
    np.bitwise_and(bits, np.uint16(0x8000), out=sign)
    out |= sign
    mag -= np.uint16(_F16_LOW)  # wraps below the range, so one comparison finds both ends
    flag = _scratch("flag", bits.size, np.bool_)
    np.greater_equal(mag, np.uint16(_F16_HIGH - _F16_LOW), out=flag)
    odd = np.flatnonzero(flag)
    if odd.size:
        out[odd] = _bf16_f16_table()[bits[odd]]
    return out.view(np.float16)


def _q8_0(blocks: np.ndarray) -> np.ndarray:
    """gguf-py's Q8_0 (quants.py, bit-exact with ggml-quants.c) in fewer passes: the scale
    d = max|x| / 127 and 1/d in float32, then x/d rounded half away from zero as trunc plus
    the fraction's carry, which equals gguf's np_roundf for every finite value. Blocks with a
    non-finite scale or inverse (inf or NaN weights, or all tiny) go through gguf-py itself."""
    n_blocks, size = blocks.shape[0], blocks.size
    # max|x| per block along the contiguous rows of the transpose: numpy reduces an axis of
    # 32 elements with a call per block, and 32 passes over all blocks at SIMD speed
    mags = _scratch("mags", size, np.float32).reshape(blocks.shape[::-1])
    np.copyto(mags, blocks.T)
    np.abs(mags, out=mags)
    d = mags.max(axis=0)[:, None] / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    if not (np.isfinite(inv).all() and np.isfinite(d).all()):
        return gguf.quants.quantize(blocks, _Q.Q8_0)
    y = _scratch("y", size, np.float32).reshape(blocks.shape)
    np.multiply(blocks, inv, out=y)
    t = _scratch("t", size, np.float32).reshape(blocks.shape)
    np.trunc(y, out=t)
    y -= t  # the fraction, exact
    q = _scratch("q", size, np.int8).reshape(blocks.shape)
    np.copyto(q, t, casting="unsafe")  # whole numbers within +-127
    flag = _scratch("flag", size, np.bool_).reshape(blocks.shape)
    np.greater_equal(y, np.float32(0.5), out=flag)
    q += flag
    np.less_equal(y, np.float32(-0.5), out=flag)
    q -= flag
    out = np.empty((n_blocks, 2 + blocks.shape[1]), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:] = q.view(np.uint8)
    return out
