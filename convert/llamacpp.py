"""Thin wrappers over llama-cpp-python's low-level ctypes API.

Used for verification (vocab-only loading and tokenization), quantization through llama.cpp's
own quantizer, and full-model logits (tests and `verify_logits`). llama.cpp's log goes through
llorch.native_log: silent unless logging is configured or LLORCH_LLAMA_LOG=1, so the
converter's --json output stays clean.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llorch import native_log
from llorch.convert.errors import ConversionError, QuantizeError
from llorch.llamacpp_init import init_llama_cpp

if TYPE_CHECKING:
    from llorch.llama_vocab import LlamaVocab


def _lib() -> Any:
    """llama_cpp, set up once for the process (llorch.llamacpp_init)."""
    return init_llama_cpp()


@contextmanager
def load_model(path: Path, *, vocab_only: bool = False, no_alloc: bool = False) -> Iterator[Any]:
    """A llama.cpp model; `no_alloc` checks every tensor's presence and shape without reading
    or allocating the weights."""
    lib = _lib()
    params = lib.llama_model_default_params()
    params.vocab_only = vocab_only
    params.n_gpu_layers = 0
    if no_alloc:
        params.no_alloc = True
        params.use_extra_bufts = False
        params.load_mode = lib.LLAMA_LOAD_MODE_NONE  # the metadata-only pass cannot mmap
    native_log.clear()
    model = lib.llama_model_load_from_file(os.fsencode(path), params)
    if not model:
        detail = native_log.last_error()
        raise ConversionError(
            f"{path}: llama.cpp could not load the written GGUF"
            + (f" ({detail})" if detail else "")
        )
    try:
        yield model
    finally:
        lib.llama_model_free(model)


def check_loads(path: Path) -> None:
    """llama.cpp accepts the file: metadata, every required tensor present with its shape."""
    with load_model(path, no_alloc=True):
        pass


def vocab(model: Any) -> LlamaVocab:
    """The model's tokenizer (llorch.llama_vocab.LlamaVocab), imported here so that importing the
    converter does not load llama.cpp's libraries."""
    from llorch.llama_vocab import LlamaVocab

    _lib()
    return LlamaVocab.of_model(model)


def strip_attributes(
    tokenizer: LlamaVocab, tokens: Sequence[str], specials: Sequence[str]
) -> dict[str, tuple[bool, bool]]:
    """(lstrip, rstrip) of each special token as llama.cpp set them on load: they come from
    llama.cpp's own per-model rules (Phi-3's, by model name), not from the GGUF."""
    lib = _lib()
    ids = {t: i for i, t in enumerate(tokens)}
    out: dict[str, tuple[bool, bool]] = {}
    for text in specials:
        attr = int(lib.llama_vocab_get_attr(tokenizer.pointer, ids[text]))
        out[text] = (
            bool(attr & lib.LLAMA_TOKEN_ATTR_LSTRIP),
            bool(attr & lib.LLAMA_TOKEN_ATTR_RSTRIP),
        )
    return out


def logits(
    path: Path,
    tokens: Sequence[int],
    *,
    n_threads: int = 2,
    lora: tuple[Path, float] | None = None,
) -> np.ndarray:
    """Logits for every position of one sequence: shape (len(tokens), n_vocab).

    The KV cache is F32 and flash attention off, so an F32 GGUF is compared without the F16
    rounding llama.cpp's default cache would add. `lora`: a GGUF LoRA file applied at a scale.
    """
    lib = _lib()
    n = len(tokens)
    with load_model(path) as model:
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = max(n, 8)
        cparams.n_batch = max(n, 8)
        cparams.n_ubatch = max(n, 8)
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.type_k = lib.GGML_TYPE_F32
        cparams.type_v = lib.GGML_TYPE_F32
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            raise ConversionError(f"{path}: llama.cpp could not create a context")
        batch = lib.llama_batch_init(n, 0, 1)
        try:
            if lora is not None:
                _set_lora(lib, model, ctx, *lora)
            for i, tok in enumerate(tokens):
                batch.token[i] = int(tok)
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            batch.n_tokens = n
            rc = lib.llama_decode(ctx, batch)
            if rc != 0:
                raise ConversionError(f"{path}: llama_decode failed with {rc}")
            vocab_n = vocab(model).n_tokens
            out = np.empty((n, vocab_n), dtype=np.float32)
            for i in range(n):
                ptr = lib.llama_get_logits_ith(ctx, i)
                out[i] = np.ctypeslib.as_array(ptr, shape=(vocab_n,))
            return out
        finally:
            lib.llama_batch_free(batch)
            lib.llama_free(ctx)


def _set_lora(lib: Any, model: Any, ctx: Any, path: Path, scale: float) -> None:
    adapter = lib.llama_adapter_lora_init(model, os.fsencode(path))  # freed with the model
    if not adapter:
        detail = native_log.last_error()
        raise ConversionError(
            f"{path}: llama.cpp could not load the LoRA" + (f" ({detail})" if detail else "")
        )
    adapters = (lib.llama_adapter_lora_p_ctypes * 1)(adapter)
    rc = lib.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(scale))
    if rc != 0:
        raise ConversionError(f"{path}: llama_set_adapters_lora failed with {rc}")


def ftype_constants() -> dict[str, int]:
    """llama.cpp file types by lower-case name (q4_k_m -> LLAMA_FTYPE_MOSTLY_Q4_K_M)."""
    lib = _lib()
    out: dict[str, int] = {}
    for name in dir(lib):
        if name.startswith("LLAMA_FTYPE_MOSTLY_"):
            out[name.removeprefix("LLAMA_FTYPE_MOSTLY_").lower()] = int(getattr(lib, name))
    return out


@dataclass(frozen=True)
class QuantizeOptions:
    """What llama-quantize takes besides the type: an importance matrix (`imatrix`: per weight,
    llama.cpp's quantizer values; `imatrix_file`, `imatrix_dataset`, `imatrix_chunks`: what
    llama-quantize records of it in the output's metadata), and per-tensor type overrides
    (`tensor_types`: (regex, ggml type) pairs, its --tensor-type)."""

    imatrix: Mapping[str, np.ndarray] | None = None
    imatrix_file: str = ""
    imatrix_dataset: str | None = None
    imatrix_chunks: int = 0
    tensor_types: tuple[tuple[str, int], ...] = ()
    # more keys for the output, written as copy_with_metadata writes them
    metadata: tuple[tuple[str, str | int | float], ...] = ()


# llama-quantize's metadata keys for the imatrix (tools/quantize/quantize.cpp, LLM_KV_QUANTIZE_*)
_KV_IMATRIX_FILE = b"quantize.imatrix.file"
_KV_IMATRIX_DATASET = b"quantize.imatrix.dataset"
_KV_IMATRIX_ENTRIES = b"quantize.imatrix.entries_count"
_KV_IMATRIX_CHUNKS = b"quantize.imatrix.chunks_count"


def quantize(
    src: Path,
    dst: Path,
    ftype: int,
    *,
    n_threads: int = 0,
    options: QuantizeOptions | None = None,
) -> None:
    """llama_model_quantize, with the parameters llama-quantize sets for the same options, so
    that the output is byte for byte llama-quantize's."""
    lib = _lib()
    params = lib.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads
    keep: list[Any] = []  # the arrays the parameters point into live until the call returns
    opts = options or QuantizeOptions()
    if opts.imatrix:
        entries = (lib.llama_model_imatrix_data * (len(opts.imatrix) + 1))()
        for i, (name, values) in enumerate(opts.imatrix.items()):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(arr)
            entries[i].name = name.encode()
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        params.imatrix = entries
        keep.append(entries)
        kvs: list[tuple[bytes, str | int | float]] = [(_KV_IMATRIX_FILE, opts.imatrix_file)]
        if opts.imatrix_dataset is not None:
            kvs.append((_KV_IMATRIX_DATASET, opts.imatrix_dataset))
        kvs.append((_KV_IMATRIX_ENTRIES, len(opts.imatrix)))
        if opts.imatrix_chunks > 0:
            kvs.append((_KV_IMATRIX_CHUNKS, opts.imatrix_chunks))
    else:
        kvs = []
    kvs += [(key.encode(), value) for key, value in opts.metadata]
    if kvs:
        overrides = _kv_overrides(lib, kvs)
        params.kv_overrides = overrides
        keep.append(overrides)
    if opts.tensor_types:
        tt = (lib.llama_model_tensor_override * (len(opts.tensor_types) + 1))()
        for i, (pattern, gtype) in enumerate(opts.tensor_types):
            tt[i].pattern = pattern.lower().encode()  # llama-quantize lower-cases the name
            tt[i].type = gtype
        tt[len(opts.tensor_types)].type = lib.GGML_TYPE_COUNT
        params.tt_overrides = tt
        keep.append(tt)
    native_log.clear()
    rc = lib.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        detail = native_log.last_error()
        raise QuantizeError(
            f"{src}: llama.cpp quantization to ftype {ftype} failed (rc={rc})"
            + (f": {detail}" if detail else "")
        )


def _kv_overrides(lib: Any, items: Sequence[tuple[bytes, str | int | float]]) -> Any:
    """llama_model_kv_override entries, zero-terminated. The quantizer writes an INT as
    UINT32 and a FLOAT as FLOAT32 (src/llama-quant.cpp), a STR up to 127 bytes."""
    overrides = (lib.llama_model_kv_override * (len(items) + 1))()
    for o, (key, value) in zip(overrides, items, strict=False):
        o.key = key
        if isinstance(value, str):
            o.tag, o.value.val_str = lib.LLAMA_KV_OVERRIDE_TYPE_STR, value.encode()[:127]
        elif isinstance(value, float):
            o.tag, o.value.val_f64 = lib.LLAMA_KV_OVERRIDE_TYPE_FLOAT, value
        else:
            o.tag, o.value.val_i64 = lib.LLAMA_KV_OVERRIDE_TYPE_INT, value
    return overrides


def patch_metadata(path: Path, metadata: Mapping[str, str | int | float]) -> None:
    """Values of keys `path` already has rewritten in place, each the same size as before (a
    number of the key's own type, a string of the same length): the header keeps its size, so
    the tensors stay where they are and nothing else is written. For keys whose values are
    known only after the file is made (placeholders given to `quantize`'s `metadata`)."""
    from llorch.gguf_header import GGUFHeaderError, rewrite_values

    try:
        rewrite_values(path, metadata)
    except GGUFHeaderError as exc:
        raise QuantizeError(str(exc)) from exc


def ggml_type_constants() -> dict[str, int]:
    """ggml tensor types by lower-case name (q4_k -> GGML_TYPE_Q4_K), as llama-quantize's
    --tensor-type names them (ggml_type_name, compared case-insensitively)."""
    lib = _lib()
    return {
        name.removeprefix("GGML_TYPE_").lower(): int(getattr(lib, name))
        for name in dir(lib)
        if name.startswith("GGML_TYPE_") and name != "GGML_TYPE_COUNT"
    }


def embeddings(
    path: Path, texts: Sequence[Sequence[int]], *, per_token: bool, n_threads: int = 2
) -> list[np.ndarray]:
    """Embeddings of each token list, one sequence at a time: per token (n, n_embd), pooling
    off; or pooled by the model's own pooling type (n_embd,), not normalised."""
    lib = _lib()
    longest = max((len(t) for t in texts), default=1)
    with load_model(path) as model:
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = max(longest, 8)
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.embeddings = True
        cparams.pooling_type = (
            lib.LLAMA_POOLING_TYPE_NONE if per_token else lib.LLAMA_POOLING_TYPE_UNSPECIFIED
        )
        cparams.type_k = cparams.type_v = lib.GGML_TYPE_F32
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            raise ConversionError(f"{path}: llama.cpp could not create a context")
        n_embd = int(lib.llama_model_n_embd(model))
        batch = lib.llama_batch_init(longest, 0, 1)
        out: list[np.ndarray] = []
        try:
            for tokens in texts:
                for i, tok in enumerate(tokens):
                    batch.token[i], batch.pos[i] = int(tok), i
                    batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = 1, 0, 1
                batch.n_tokens = len(tokens)
                memory = lib.llama_get_memory(ctx)  # None for encoders, which keep no cache
                if memory:
                    lib.llama_memory_clear(memory, True)
                rc = lib.llama_decode(ctx, batch)
                if rc != 0:
                    raise ConversionError(f"{path}: llama_decode failed with {rc}")
                if per_token:
                    rows = [lib.llama_get_embeddings_ith(ctx, i) for i in range(len(tokens))]
                    out.append(np.stack([np.ctypeslib.as_array(p, shape=(n_embd,)) for p in rows]))
                else:
                    ptr = lib.llama_get_embeddings_seq(ctx, 0)
                    if not ptr:
                        raise ConversionError(f"{path}: the model has no pooling type")
                    out.append(np.ctypeslib.as_array(ptr, shape=(n_embd,)).copy())
            return out
        finally:
            lib.llama_batch_free(batch)
            lib.llama_free(ctx)
