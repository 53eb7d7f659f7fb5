"""ModelBackend over llama-cpp-python's low-level API (`llama_cpp.llama_*`).

One instance owns one llama.cpp model, context and batch; it is not thread-safe, and the
scheduler guarantees that a single thread calls it.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import llama_cpp as ll

from worker.backend import sampling, system
from worker.backend.errors import ContextOverflowError, InferenceError, ModelLoadError
from worker.backend.protocol import (
    BackendInfo,
    ChatMessage,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    LoadOptions,
    ModelInfo,
    StopReason,
    TokenEvent,
)
from worker.backend.text import IncrementalText

_backend_initialised = False
_native_log = logging.getLogger("llorch.llama_cpp")
# ggml_log_level: 1 info, 2 warn, 3 error, 4 debug, 5 continuation of the previous line.
# Loading a model alone logs over a thousand lines, warnings included (unused tokens, ...),
# so only errors reach the default log level.
_NATIVE_LEVELS = {3: logging.ERROR}


@ll.llama_log_callback
def _forward_native_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", "replace").rstrip()
    if line:
        _native_log.log(_NATIVE_LEVELS.get(level, logging.DEBUG), "%s", line)


def _init_backend() -> None:
    global _backend_initialised
    if not _backend_initialised:
        ll.llama_log_set(_forward_native_log, ctypes.c_void_p(0))
        ll.llama_backend_init()
        _backend_initialised = True


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def default_threads() -> int:
    # llama.cpp's own default is the number of physical cores; os.cpu_count() counts SMT
    # siblings, which slow decoding down when oversubscribed.
    count = os.cpu_count() or 1
    return max(1, count // 2) if count > 4 else count


def _kv_overrides(
    items: Sequence[tuple[str, int | float | bool | str]],
) -> ctypes.Array[ll.llama_model_kv_override] | None:
    """A llama_model_kv_override array, terminated by an entry with an empty key (llama.h)."""
    if not items:
        return None
    array = (ll.llama_model_kv_override * (len(items) + 1))()
    for entry, (key, value) in zip(array, items, strict=False):
        entry.key = key.encode()
        if isinstance(value, bool):
            entry.tag, entry.value.val_bool = ll.LLAMA_KV_OVERRIDE_TYPE_BOOL, value
        elif isinstance(value, int):
            entry.tag, entry.value.val_i64 = ll.LLAMA_KV_OVERRIDE_TYPE_INT, value
        elif isinstance(value, float):
            entry.tag, entry.value.val_f64 = ll.LLAMA_KV_OVERRIDE_TYPE_FLOAT, value
        else:
            entry.tag, entry.value.val_str = ll.LLAMA_KV_OVERRIDE_TYPE_STR, value.encode()
    return array


class LlamaCppBackend:
    """A GGUF model loaded through llama.cpp."""

    def __init__(self) -> None:
        self._model: ll.llama_model_p | None = None
        self._ctx: ll.llama_context_p | None = None
        self._vocab: ll.llama_vocab_p | None = None
        self._batch: ll.llama_batch | None = None
        self._n_batch = 0
        self._info: ModelInfo | None = None

    # -- loading ---------------------------------------------------------------------------

    def load(self, path: Path, options: LoadOptions) -> ModelInfo:
        if self._model is not None:
            raise ModelLoadError("a model is already loaded; close() it first")
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        _init_backend()
        model_params = ll.llama_model_default_params()
        model_params.n_gpu_layers = options.n_gpu_layers
        overrides = _kv_overrides(options.metadata_overrides)
        if overrides is not None:
            model_params.kv_overrides = overrides
        model = ll.llama_model_load_from_file(str(path).encode(), model_params)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {path} (not a GGUF it supports?)")
        self._model = model
        try:
            self._create_context(options)
            self._info = self._describe(path, options)
        except BaseException:
            self.close()
            raise
        return self._info

    def _create_context(self, options: LoadOptions) -> None:
        assert self._model is not None
        n_ctx_train = ll.llama_model_n_ctx_train(self._model)
        n_ctx = options.ctx_size or n_ctx_train
        threads = options.threads or default_threads()
        params = ll.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = min(options.batch_size, n_ctx)
        params.n_ubatch = params.n_batch
        params.n_seq_max = 1
        params.n_threads = threads
        params.n_threads_batch = threads
        ctx = ll.llama_init_from_model(self._model, params)
        if not ctx:
            raise ModelLoadError(
                f"llama.cpp could not create a context of {n_ctx} tokens "
                "(out of memory? try a smaller --ctx-size)"
            )
        self._ctx = ctx
        self._vocab = ll.llama_model_get_vocab(self._model)
        self._n_batch = ll.llama_n_batch(ctx)
        self._batch = ll.llama_batch_init(self._n_batch, 0, 1)

    def _meta(self, key: str) -> str:
        buf = ctypes.create_string_buffer(4096)
        n = ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else ""

    def _describe(self, path: Path, options: LoadOptions) -> ModelInfo:
        assert self._model is not None and self._ctx is not None and self._vocab is not None
        desc = ctypes.create_string_buffer(256)
        ll.llama_model_desc(self._model, desc, len(desc))
        template = ll.llama_model_chat_template(self._model, None)
        metadata = {}
        for i in range(ll.llama_model_meta_count(self._model)):
            key = ctypes.create_string_buffer(256)
            val = ctypes.create_string_buffer(256)
            ll.llama_model_meta_key_by_index(self._model, i, key, len(key))
            ll.llama_model_meta_val_str_by_index(self._model, i, val, len(val))
            k = key.value.decode("utf-8", "replace")
            if k.startswith("tokenizer.ggml.") or k == "tokenizer.chat_template":
                continue  # vocabularies and templates are large and not metadata to show
            metadata[k] = val.value.decode("utf-8", "replace")
        return ModelInfo(
            path=path.resolve(),
            architecture=self._meta("general.architecture"),
            name=self._meta("general.name") or path.stem,
            description=desc.value.decode("utf-8", "replace"),
            size_bytes=path.stat().st_size,
            n_params=ll.llama_model_n_params(self._model),
            n_ctx_train=ll.llama_model_n_ctx_train(self._model),
            n_ctx=ll.llama_n_ctx(self._ctx),
            n_vocab=ll.llama_vocab_n_tokens(self._vocab),
            n_gpu_layers=options.n_gpu_layers,
            sha256=file_sha256(path),
            chat_template=template.decode("utf-8", "replace") if template else None,
            metadata=metadata,
        )

    def info(self) -> ModelInfo:
        if self._info is None:
            raise ModelLoadError("no model loaded")
        return self._info

    def backend_info(self) -> BackendInfo:
        return system.backend_info()

    # -- text ------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        raw = text.encode()
        # A token covers at least one byte, plus room for BOS/EOS.
        capacity = len(raw) + 8
        tokens = (ll.llama_token * capacity)()
        n = ll.llama_tokenize(self._vocab, raw, len(raw), tokens, capacity, add_special, True)
        if n < 0:
            raise InferenceError(f"tokenization needs {-n} tokens, more than {capacity}")
        return list(tokens[:n])

    def detokenize(self, tokens: Sequence[int]) -> str:
        arr = (ll.llama_token * max(1, len(tokens)))(*tokens)
        capacity = 64 + 32 * len(tokens)
        buf = ctypes.create_string_buffer(capacity)
        n = ll.llama_detokenize(self._vocab, arr, len(tokens), buf, capacity, False, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_detokenize(self._vocab, arr, len(tokens), buf, -n, False, False)
        return buf.raw[:n].decode("utf-8", "replace")

    def token_bytes(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    # -- generation ------------------------------------------------------------------------

    def _decode(self, tokens: Sequence[int], start_pos: int, logits_last: bool) -> None:
        batch = self._batch
        assert batch is not None
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = start_pos + i  # type: ignore[call-overload]
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 0
        if logits_last:
            batch.logits[len(tokens) - 1] = 1
        batch.n_tokens = len(tokens)
        rc = ll.llama_decode(self._ctx, batch)
        if rc != 0:
            raise InferenceError(f"llama_decode failed with status {rc} at position {start_pos}")

    def generate(
        self, request: GenerationRequest, cancelled: Callable[[], bool]
    ) -> Iterator[GenerationEvent]:
        info = self.info()
        prompt = request.prompt_tokens
        if not prompt:
            raise InferenceError("empty prompt: nothing to condition on")
        if len(prompt) + request.max_tokens > info.n_ctx:
            raise ContextOverflowError(len(prompt), request.max_tokens, info.n_ctx)
        chain = sampling.build_chain(request.sampling, info.n_vocab, info.n_ctx)
        try:
            yield from self._generate(request, chain, cancelled)
        finally:
            sampling.free_chain(chain)

    def _generate(
        self,
        request: GenerationRequest,
        chain: sampling.SamplerChain,
        cancelled: Callable[[], bool],
    ) -> Iterator[GenerationEvent]:
        prompt = request.prompt_tokens
        # A fresh KV cache per request: stale state from the last one must never leak in.
        ll.llama_memory_clear(ll.llama_get_memory(self._ctx), True)
        started = time.perf_counter()

        def finish(reason: StopReason, n_out: int, t0: float, matched: str | None = None):
            now = time.perf_counter()
            return FinishEvent(
                stop_reason=reason,
                tokens_out=n_out,
                decode_time_ms=(now - t0) * 1000.0,
                prompt_tokens=len(prompt),
                seed=chain.seed,
                stop_sequence_matched=matched,
                prompt_time_ms=(t0 - started) * 1000.0,
            )

        for start in range(0, len(prompt), self._n_batch):
            if cancelled():
                yield finish(StopReason.CANCELLED, 0, time.perf_counter())
                return
            chunk = prompt[start : start + self._n_batch]
            self._decode(chunk, start, logits_last=start + len(chunk) == len(prompt))
        for token in prompt:
            ll.llama_sampler_accept(chain.handle, token)  # the penalties window sees the prompt

        decode_started = time.perf_counter()
        text = IncrementalText(request.stop)
        # A token event whose text is still held back (partial character or stop prefix) waits
        # for the next token, so that text released at the very end has an event to ride on.
        pending: TokenEvent | None = None
        n_out = 0
        while True:
            if cancelled():
                reason = StopReason.CANCELLED
                break
            token = ll.llama_sampler_sample(chain.handle, self._ctx, -1)
            if ll.llama_vocab_is_eog(self._vocab, token):
                reason = StopReason.EOS
                break
            released, matched = text.push(self.token_bytes(token))
            if pending is not None:
                yield pending
                pending = None
            event = TokenEvent(index=n_out, token_id=token, text=released)
            n_out += 1
            if matched is not None:
                yield event
                yield finish(StopReason.STOP_SEQUENCE, n_out, decode_started, matched)
                return
            if n_out >= request.max_tokens:
                yield replace(event, text=released + text.flush())
                yield finish(StopReason.MAX_TOKENS, n_out, decode_started)
                return
            if text.holding:
                pending = event
            else:
                yield event
            self._decode([token], len(prompt) + n_out - 1, logits_last=True)
        if pending is not None:
            yield replace(pending, text=pending.text + text.flush())
        yield finish(reason, n_out, decode_started)

    # -- chat ------------------------------------------------------------------------------

    def builtin_chat_template(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool
    ) -> str:
        from worker.backend import chat_native

        return chat_native.apply_builtin_template(self.info(), messages, add_generation_prompt)

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            ll.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            ll.llama_model_free(self._model)
            self._model = None
        self._vocab = None
        self._info = None
