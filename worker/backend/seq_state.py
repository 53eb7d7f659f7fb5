"""A sequence's state copied out of a llama.cpp context and back, once each way.

A checkpoint (checkpoints.py) or a host-RAM cache entry (prompt_cache.py) is megabytes to
hundreds of megabytes. The bytes llama.cpp writes go straight into the `bytearray` that is
kept, and are read back from it in place: a ctypes buffer copied into `bytes` held three
copies at the peak, and glibc, which raises its mmap threshold to the size of a freed
mapping, then kept such buffers on the heap, resident after they were freed.
"""

from __future__ import annotations

import ctypes

import llama_cpp as ll

FULL = 0  # the whole sequence state
PARTIAL = ll.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY  # only what cannot be rolled back


def copy_out(ctx: ll.llama_context_p, seq_id: int, flags: int, limit: int = -1) -> bytearray | None:
    """The state of `seq_id` (`flags`: FULL or PARTIAL); None when there is none, or when it
    is over `limit` bytes (-1: no limit)."""
    size = int(ll.llama_state_seq_get_size_ext(ctx, seq_id, flags))
    if size <= 0 or 0 <= limit < size:
        return None
    data = bytearray(size)
    view = (ctypes.c_uint8 * size).from_buffer(data)
    written = int(ll.llama_state_seq_get_data_ext(ctx, view, size, seq_id, flags))
    del view  # the export ends here, so the array can be shortened
    if written <= 0:
        return None
    if written < size:
        del data[written:]
    return data


def copy_in(ctx: ll.llama_context_p, data: bytearray, seq_id: int, flags: int) -> bool:
    """Load `data` (from copy_out with the same flags) into `seq_id`; False when refused."""
    view = (ctypes.c_uint8 * len(data)).from_buffer(data)
    try:
        return int(ll.llama_state_seq_set_data_ext(ctx, view, len(data), seq_id, flags)) > 0
    finally:
        del view
