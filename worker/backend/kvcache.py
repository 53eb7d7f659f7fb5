"""The KV cache's element types (`--cache-type-k` / `--cache-type-v`) and its size.

The names are llama.cpp's (`-ctk` / `-ctv`, common/arg.cpp's kv_cache_types); a quantized V
cache is read only by the flash-attention kernels, so llama.cpp refuses one without flash
attention (llama-context.cpp: "quantized V cache requires flash_attn to be enabled").

The size a context really allocated is what llama.cpp logs when it creates its caches
(`llama_kv_cache: size = ... MiB`, once per cache: an interleaved-SWA model has two, a hybrid
model a recurrent one too); llama.h has no call that returns it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from llorch.worker.backend.protocol import KV_CACHE_TYPES

# name -> ggml_type (gguf's GGMLQuantizationType numbers them as ggml.h does)
KV_TYPES: dict[str, GGMLQuantizationType] = {
    name: GGMLQuantizationType[name.upper()] for name in KV_CACHE_TYPES
}
UNQUANTIZED = frozenset({"f16", "bf16"})

# "llama_kv_cache: size =   48.00 MiB (...)", "llama_memory_recurrent: size =    0.06 MiB (...)"
_SIZE_LINE = re.compile(r"^(llama_kv_cache|llama_memory_recurrent): size = +([0-9.]+) MiB")


def ggml_type(name: str) -> int:
    try:
        return int(KV_TYPES[name])
    except KeyError:
        raise ValueError(f"KV cache type {name!r} is not one of {', '.join(KV_TYPES)}") from None


def bytes_per_value(name: str) -> float:
    """Bytes one K or V element takes: a quantized type's block size over its element count
    (q8_0: 34 bytes per 32 values)."""
    block, size = GGML_QUANT_SIZES[KV_TYPES[name]]
    return size / block


def logged_size_bytes(fragments: Iterable[str]) -> int | None:
    """The sum of the cache sizes llama.cpp logged while creating a context, or None when
    it logged none (an encoder, which has no cache)."""
    total, found = 0.0, False
    for line in "".join(fragments).splitlines():
        match = _SIZE_LINE.match(line.strip())
        if match:
            total += float(match.group(2))
            found = True
    return round(total * 2**20) if found else None
