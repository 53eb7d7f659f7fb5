"""ModelBackend over llama-cpp-python's low-level API (`llama_cpp.llama_*`).

One instance owns one llama.cpp model, context and batch; it is not thread-safe, and the
scheduler guarantees that a single thread calls it.
"""

from __future__ import annotations

import ctypes
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import gguf
import llama_cpp as ll

from llorch import keys, native_log
from llorch.cpus import default_threads
from llorch.llama_vocab import LlamaVocab
from llorch.llamacpp_init import init_llama_cpp
from llorch.worker.backend import (
    drafters,
    fit,
    kvcache,
    offload,
    provenance,
    rpc,
    system,
    tensor_overrides,
)
from llorch.worker.backend.batch import LlamaBatchDecoder
from llorch.worker.backend.checkpoints import Checkpoints
from llorch.worker.backend.embed import LlamaEmbedder
from llorch.worker.backend.errors import (
    InvalidRequestError,
    ModelLoadError,
    OutOfMemoryError,
    WorkerError,
)
from llorch.worker.backend.grammar import GrammarError
from llorch.worker.backend.lora import LoraAdapters
from llorch.worker.backend.mtmd import Projector, expand
from llorch.worker.backend.offload import ModelFootprint
from llorch.worker.backend.protocol import (
    BackendInfo,
    ChatMessage,
    Device,
    FimTokens,
    FitInfo,
    KvCacheInfo,
    LoadOptions,
    Media,
    MediaSpan,
    ModelInfo,
    RankInput,
)
from llorch.worker.backend.segments import open_segments
from llorch.worker.models import file_sha256, host_memory_available

log = logging.getLogger("llorch.backend")


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


_FLASH_ATTN = {
    "auto": ll.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": ll.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": ll.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


def _gpu_offload() -> bool:
    # Not llama_supports_gpu_offload(): a build with the RPC backend says yes to that on a
    # machine without a GPU.
    return system.has_gpu()


def _gpus() -> list[Device]:
    """The GPUs layers can go to (none where the build cannot offload)."""
    if not _gpu_offload():
        return []
    return [d for d in system.devices() if d.kind in ("gpu", "igpu")]


def _gib(n: int | None) -> str:
    return "an unknown amount" if n is None else f"{n / 2**30:.2f} GiB"


def _out_of_memory(what: str, device: str, needed: int, free: int) -> OutOfMemoryError:
    return OutOfMemoryError(
        f"out of memory: {what} need {_gib(needed)} on the {device}, {_gib(free)} is free; "
        "offload fewer layers (--n-gpu-layers) or use a smaller quantization",
        device=device,
        needed_bytes=needed,
        free_bytes=free,
    )


class LlamaCppBackend:
    """A GGUF model loaded through llama.cpp."""

    def __init__(self) -> None:
        self._model: ll.llama_model_p | None = None
        self._ctx: ll.llama_context_p | None = None
        self._vocab: ll.llama_vocab_p | None = None
        self._text: LlamaVocab | None = None  # tokenizing, over the same vocabulary
        self._decoder: LlamaBatchDecoder | None = None
        self._n_batch = 0
        self._info: ModelInfo | None = None
        self._placement: rpc.Placement | None = None  # devices of other machines (--rpc)
        self._embedder: LlamaEmbedder | None = None  # created on the first embedding
        self._adapters: LoraAdapters | None = None
        self._options: LoadOptions | None = None
        self._projector: Projector | None = None  # --mmproj: images in
        self._kv_bytes: int | None = None  # the KV cache llama.cpp allocated (its log line)
        self._fit: FitInfo | None = None  # what --fit chose

    # -- loading ---------------------------------------------------------------------------

    def load(self, path: Path, options: LoadOptions) -> ModelInfo:
        if self._model is not None:
            raise ModelLoadError("a model is already loaded; close() it first")
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        init_llama_cpp()
        self._fit = None
        if options.n_gpu_layers == "auto" and options.fit is not None and _gpus():
            options = self._fit_on_gpu(path, options)  # the layers and the context
        elif options.n_gpu_layers == "auto":
            options = replace(options, n_gpu_layers=self._fit_gpu_layers(path, options))
        assert isinstance(options.n_gpu_layers, int)
        model_params = ll.llama_model_default_params()
        model_params.n_gpu_layers = options.n_gpu_layers
        # Before the load: an unreachable rpc server makes ggml abort the process.
        endpoints = [rpc.parse_endpoint(e) for e in options.rpc_servers]
        self._placement = rpc.place(endpoints, options.tensor_split, ll.llama_max_devices())
        self._placement.apply(model_params)
        overrides = _kv_overrides(options.metadata_overrides)
        if overrides is not None:
            model_params.kv_overrides = overrides
        # kept referenced until the load returns: llama.cpp reads the patterns while loading
        placed = tensor_overrides.build(options.tensor_overrides)
        if placed is not None:
            model_params.tensor_buft_overrides = ctypes.cast(placed, ctypes.c_void_p)
        fitting = options.fit is not None and self._fit is None  # not chosen before the load
        free = self._free_before_load(options) if fitting else None
        native_log.clear()
        with native_log.capture() as loading:
            model = ll.llama_model_load_from_file(str(path).encode(), model_params)
        del placed
        if not model:
            raise self._load_failure(path, options.n_gpu_layers)
        self._model = model
        try:
            if fitting:
                options = self._fit_context(options, free, loading)
            self._create_context(path, options)
            self._info = self._describe(path, options)
        except BaseException:
            self.close()
            raise
        return self._info

    def _create_context(self, path: Path, options: LoadOptions) -> None:
        assert self._model is not None
        n_ctx_train = ll.llama_model_n_ctx_train(self._model)
        per_slot = options.ctx_size or n_ctx_train
        parallel = max(1, options.parallel)
        threads = options.threads or default_threads()
        params = ll.llama_context_default_params()
        params.n_ctx = per_slot * parallel
        params.n_batch = options.batch_size
        params.n_ubatch = options.batch_size
        params.n_seq_max = parallel
        # One KV stream per sequence: each slot owns exactly ctx_size cells, so a request
        # admitted against ctx_size can never run out of room because of its neighbours.
        params.kv_unified = False
        # Sliding-window layers (Gemma 2/3/4) keep only their window unless asked: prefix
        # reuse past a cut goes through checkpoints (checkpoints.py, llama.cpp PR 13194).
        params.swa_full = options.swa_full
        params.n_threads = threads
        params.n_threads_batch = threads
        params.type_k = kvcache.ggml_type(options.cache_type_k)
        params.type_v = kvcache.ggml_type(options.cache_type_v)
        params.flash_attn_type = _FLASH_ATTN[options.flash_attn]
        native_log.clear()
        with native_log.capture() as logged:
            ctx = ll.llama_init_from_model(self._model, params)
        if not ctx:
            raise self._context_failure(path, parallel, per_slot, options, logged)
        self._ctx = ctx
        self._kv_bytes = kvcache.logged_size_bytes(logged)
        self._adapters = LoraAdapters(self._model, options.lora) if options.lora else None
        self._vocab = ll.llama_model_get_vocab(self._model)
        self._text = LlamaVocab(self._vocab)
        self._n_batch = ll.llama_n_batch(ctx)
        actual = ll.llama_n_ctx_seq(ctx)
        if actual != per_slot:
            # llama.cpp rounds the context up (to a multiple of 256 cells): say so, since
            # admission and /health use the context each slot really has.
            log.warning(
                "--ctx-size %d became %d tokens per slot (llama.cpp rounds the context up)",
                per_slot,
                actual,
            )
        if options.mmproj is not None:
            self._projector = Projector(
                options.mmproj, self._model, threads, _gpu_offload() and options.n_gpu_layers != 0
            )
        self._decoder = LlamaBatchDecoder(
            ctx,
            self._vocab,
            ll.llama_vocab_n_tokens(self._vocab),
            self._n_batch,
            parallel,
            ll.llama_n_ctx_seq(ctx),
            self.token_bytes,
            backend_sampling=self._use_backend_sampling(options),
            adapters=self._adapters,
            spec=options.speculative,
            cache_bytes=options.cache_bytes,
            checkpoints=Checkpoints(
                ctx,
                self._model,
                swa_full=options.swa_full,
                per_slot=options.ctx_checkpoints,
                every=options.checkpoint_every,
                n_ubatch=ll.llama_n_ubatch(ctx),
            ),
            media=self._projector.eval if self._projector is not None else None,
            drafter=drafters.model_drafter(
                options.speculative, self._vocab, parallel, actual, threads, options.n_gpu_layers
            ),
        )

    @staticmethod
    def _load_failure(path: Path, n_gpu_layers: int) -> WorkerError:
        """Out of memory when the weights bound for a device exceed its free memory;
        otherwise a file llama.cpp refused, with its own words."""
        error = native_log.last_error()  # for the operator; what failed comes from numbers
        said = f": {error}" if error else ""
        try:
            model = offload.footprint(path)
        except Exception as exc:
            return ModelLoadError(f"{path} is not a GGUF file llama.cpp can read ({exc}){said}")
        on_gpu, _ = offload.weight_bytes(model, n_gpu_layers if _gpu_offload() else 0)
        gpus = [d for d in system.devices() if d.kind in ("gpu", "igpu")]
        gpu_free = max((d.memory_free_bytes for d in gpus), default=0)
        if on_gpu and gpus and on_gpu > gpu_free:
            return _out_of_memory("the model's weights", "gpu", on_gpu, gpu_free)
        return ModelLoadError(f"llama.cpp could not load {path}{said}")

    @staticmethod
    def _context_failure(
        path: Path, parallel: int, per_slot: int, options: LoadOptions, logged: list[str]
    ) -> WorkerError:
        """A context llama.cpp could not create: cache types or flash attention it refused
        for this model (in its own words), else memory, sized from the GGUF header, so the
        message says how much the KV cache asked for and how much the machine had."""
        types = (options.cache_type_k, options.cache_type_v)
        refused = [
            line.strip()
            for line in "".join(logged).splitlines()
            if "cache type" in line or "V cache" in line or "flash" in line.lower()
            if "requires" in line or "does not" in line or "not support" in line
        ]
        if refused:
            return ModelLoadError(
                f"llama.cpp refused --cache-type-k {types[0]} --cache-type-v {types[1]} "
                f"--flash-attn {options.flash_attn} for {path.name}: {refused[-1]}"
            )
        try:
            needed = offload.kv_cache_bytes(offload.footprint(path), parallel * per_slot, *types)
        except Exception:
            needed = None
        free = host_memory_available()
        return OutOfMemoryError(
            f"out of memory: llama.cpp could not create a context of {parallel} slots x "
            f"{per_slot} tokens; its KV cache needs {_gib(needed)}, {_gib(free)} of memory is "
            "available; try a smaller --ctx-size or --parallel",
            device="host",
            needed_bytes=needed,
            free_bytes=free,
        )

    @staticmethod
    def _free_before_load(options: LoadOptions) -> int | None:
        """The memory --fit sizes against, read before the weights take theirs: the GPU
        with most room when layers go to one, else the host's."""
        gpus = _gpus()
        if gpus and options.n_gpu_layers != 0:
            return max(d.memory_free_bytes for d in gpus)
        return fit.free_host_bytes()

    @staticmethod
    def _footprint(model: ll.llama_model_p, weights: int, loading: list[str]) -> ModelFootprint:
        """What --fit prices for a model llama.cpp has loaded (or sized: no_alloc)."""

        def meta(key: str) -> str:
            buf = ctypes.create_string_buffer(256)
            n = ll.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
            return buf.value.decode("utf-8", "replace") if n >= 0 else ""

        n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
        arch = meta(gguf.Keys.General.ARCHITECTURE)
        n_layer = ll.llama_model_n_layer(model)
        memory = (
            "recurrent"
            if ll.llama_model_is_recurrent(model)
            else "hybrid"
            if ll.llama_model_is_hybrid(model)
            else "attention"
        )
        return fit.loaded_footprint(meta, arch, n_layer, n_vocab, weights, loading, memory)

    def _fit_on_gpu(self, path: Path, options: LoadOptions) -> LoadOptions:
        """--fit on a GPU, before the load: every layer on the GPU with the context that
        fits there, sized from a load that allocates nothing (llama.cpp's no_alloc, as its
        own fit measures); where not even the floor fits, the floor context and the layers
        that fit with it (`--n-gpu-layers auto` at that context, from the GGUF header)."""
        assert options.fit is not None
        free = max(d.memory_free_bytes for d in _gpus())
        params = ll.llama_model_default_params()
        params.n_gpu_layers = -1
        params.no_alloc = True  # with no mapping either, as common/fit.cpp loads it
        params.load_mode = ll.LLAMA_LOAD_MODE_NONE
        with native_log.capture() as loading:
            probe = ll.llama_model_load_from_file(str(path).encode(), params)
        if not probe:  # the real load will say why
            return replace(options, n_gpu_layers=-1)
        try:
            weights = ll.llama_model_size(probe)
            model = self._footprint(probe, weights, loading)
        finally:
            ll.llama_model_free(probe)
        parallel = max(1, options.parallel)
        types = (options.cache_type_k, options.cache_type_v)
        try:
            choice = fit.choose(
                model,
                options.fit,
                free_bytes=free,
                weights_bytes=weights,
                parallel=parallel,
                type_k=types[0],
                type_v=types[1],
                swa_full=options.swa_full,
                n_ubatch=options.batch_size,
                device="gpu",
            )
            layers = -1
        except OutOfMemoryError:
            layers, choice = fit.with_fewer_layers(
                offload.footprint(path),
                options.fit,
                free_bytes=free,
                parallel=parallel,
                type_k=types[0],
                type_v=types[1],
                n_ubatch=options.batch_size,
            )
        self._log_fit(choice)
        self._fit = choice
        return replace(options, n_gpu_layers=layers, ctx_size=choice.ctx_per_slot)

    def _fit_context(
        self, options: LoadOptions, free: int | None, loading: list[str]
    ) -> LoadOptions:
        """--fit after the load (the host, or a GPU with --n-gpu-layers given): the context
        per slot that fits, logged and kept for /health."""
        assert self._model is not None and options.fit is not None
        n_layer = ll.llama_model_n_layer(self._model)
        weights = ll.llama_model_size(self._model)
        device = "host"
        if _gpus() and options.n_gpu_layers != 0:
            # the offloaded share of the weights (the output layer counts as a layer)
            device = "gpu"
            if 0 < int(options.n_gpu_layers) < n_layer + 1:
                weights = weights * int(options.n_gpu_layers) // (n_layer + 1)
        choice = fit.choose(
            self._footprint(self._model, weights, loading),
            options.fit,
            free_bytes=free,
            weights_bytes=weights,
            parallel=max(1, options.parallel),
            type_k=options.cache_type_k,
            type_v=options.cache_type_v,
            swa_full=options.swa_full,
            n_ubatch=options.batch_size,
            device=device,
        )
        self._log_fit(choice)
        self._fit = choice
        return replace(options, ctx_size=choice.ctx_per_slot)

    @staticmethod
    def _log_fit(choice: FitInfo) -> None:
        log.info(
            "--fit: %d slots x %d tokens, %s expected (weights %s, KV cache %s, compute %s) "
            "of %s free on the %s: %s",
            choice.parallel,
            choice.ctx_per_slot,
            _gib(choice.expected_bytes),
            _gib(choice.weights_bytes),
            _gib(choice.kv_bytes),
            _gib(choice.compute_bytes),
            _gib(choice.free_bytes),
            choice.device,
            choice.reason,
        )

    @staticmethod
    def _fit_gpu_layers(path: Path, options: LoadOptions) -> int:
        gpus = _gpus()
        if not gpus:
            return 0
        try:
            model = offload.footprint(path)
        except Exception as exc:  # not a GGUF the reader understands: llama.cpp will say so
            log.warning("cannot size %s for GPU offload (%s); offloading nothing", path, exc)
            return 0
        n_ctx_total = (options.ctx_size or model.n_ctx_train) * max(1, options.parallel)
        # llama.cpp fills the first device first; size against the one with most room.
        free = max(d.memory_free_bytes for d in gpus)
        layers = offload.fit_layers(
            model, free, n_ctx_total, options.cache_type_k, options.cache_type_v
        )
        log.info("--n-gpu-layers auto: %d of %d layers fit", layers, len(model.layer_bytes) + 1)
        return layers

    @staticmethod
    def _use_backend_sampling(options: LoadOptions) -> bool:
        if options.backend_sampling is not None:
            return options.backend_sampling
        # Worth it where logits live on a GPU: reading 262k logits back per token costs more
        # than sampling them in place. On the CPU the chain runs on the same data either way.
        return _gpu_offload() and options.n_gpu_layers != 0

    def _meta(self, key: str) -> str:
        buf = ctypes.create_string_buffer(4096)
        n = ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n >= len(buf):  # the whole value (an embedding prompt may be long), not its start
            buf = ctypes.create_string_buffer(n + 1)
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
        arch = self._meta(gguf.Keys.General.ARCHITECTURE)
        encoder = self._meta(gguf.Keys.Attention.CAUSAL.format(arch=arch)) == "false"
        n_ctx = ll.llama_n_ctx_seq(self._ctx)
        self._options = options
        return ModelInfo(
            path=path.resolve(),
            architecture=self._meta(gguf.Keys.General.ARCHITECTURE),
            name=self._meta(gguf.Keys.General.NAME) or path.stem,
            description=desc.value.decode("utf-8", "replace"),
            size_bytes=path.stat().st_size,
            n_params=ll.llama_model_n_params(self._model),
            n_ctx_train=ll.llama_model_n_ctx_train(self._model),
            n_ctx=n_ctx,
            n_vocab=ll.llama_vocab_n_tokens(self._vocab),
            n_gpu_layers=options.n_gpu_layers if isinstance(options.n_gpu_layers, int) else 0,
            sha256=file_sha256(path),
            chat_template=template.decode("utf-8", "replace") if template else None,
            bos_token=self._words().token_text(self._words().bos()),
            eos_token=self._words().token_text(self._words().eos()),
            metadata=metadata,
            embedding_only=encoder,
            # An encoder reads each input whole: its training context is the bound.
            n_ctx_embed=ll.llama_model_n_ctx_train(self._model) if encoder else n_ctx,
            # the converter writes false for a sentence-transformers model without Normalize
            normalize_embeddings=self._meta(keys.EMBEDDING_NORMALIZE) != "false",
            reranker=self._meta(gguf.Keys.LLM.POOLING_TYPE.format(arch=arch))
            == str(int(gguf.PoolingType.RANK)),
            rerank_template=self._meta(gguf.Keys.Tokenizer.CHAT_TEMPLATE_N.format(name="rerank"))
            or None,
            pair_separator=self._pair_separator(),
            embedding_prompts=json.loads(self._meta(keys.EMBEDDING_PROMPTS) or "{}"),
            default_prompt=self._meta(keys.EMBEDDING_DEFAULT_PROMPT) or None,
            lora=options.lora,
            source=provenance.model_source(self._meta),
            fim=self._fim_tokens(),
            media_inputs=self._projector.inputs if self._projector is not None else (),
            kv_cache=self._kv_cache_info(options),
            fit=self._fit,
        )

    def _kv_cache_info(self, options: LoadOptions) -> KvCacheInfo | None:
        if self._kv_bytes is None:
            return None
        assert self._ctx is not None
        return KvCacheInfo(
            type_k=options.cache_type_k,
            type_v=options.cache_type_v,
            flash_attn=options.flash_attn,
            size_bytes=self._kv_bytes,
            bytes_per_token=self._kv_bytes / max(1, ll.llama_n_ctx(self._ctx)),
        )

    def _fim_tokens(self) -> FimTokens:
        vocab = self._vocab

        def known(token: int) -> int | None:
            return None if token == ll.LLAMA_TOKEN_NULL else int(token)

        return FimTokens(
            pre=known(ll.llama_vocab_fim_pre(vocab)),
            suf=known(ll.llama_vocab_fim_suf(vocab)),
            mid=known(ll.llama_vocab_fim_mid(vocab)),
            pad=known(ll.llama_vocab_fim_pad(vocab)),
            rep=known(ll.llama_vocab_fim_rep(vocab)),
            sep=known(ll.llama_vocab_fim_sep(vocab)),
            bos=known(ll.llama_vocab_bos(vocab)) if ll.llama_vocab_get_add_bos(vocab) else None,
        )

    def info(self) -> ModelInfo:
        if self._info is None:
            raise ModelLoadError("no model loaded")
        return self._info

    def backend_info(self) -> BackendInfo:
        return rpc.with_remote(system.backend_info(), self._placement)

    # -- text ------------------------------------------------------------------------------

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return self._words().tokenize(text, add_special, parse_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._words().detokenize(tokens)

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        return self._words().token_bytes(token, special=special)

    def check_grammar(self, grammar: str) -> None:
        sampler = ll.llama_sampler_init_grammar(self._words().pointer, grammar.encode(), b"root")
        if not sampler:
            raise GrammarError(
                "the grammar does not parse (GBNF with a `root` rule)", param="grammar"
            )
        ll.llama_sampler_free(sampler)

    def _pair_separator(self) -> int | None:
        vocab = self._vocab
        if ll.llama_vocab_get_add_eos(vocab) and ll.llama_vocab_get_add_sep(vocab):
            return int(ll.llama_vocab_sep(vocab))
        return None

    def _words(self) -> LlamaVocab:
        if self._text is None:
            raise ModelLoadError("no model loaded")
        return self._text

    # -- generation ------------------------------------------------------------------------

    def decoder(self) -> LlamaBatchDecoder:
        if self._decoder is None:
            raise ModelLoadError("no model loaded")
        return self._decoder

    def media_prompt(
        self, tokens: Sequence[int], media: Sequence[Media], marker: int
    ) -> tuple[tuple[int, ...], tuple[MediaSpan, ...]]:
        if self._projector is None:
            raise InvalidRequestError(
                f"{self.info().name} takes no images or audio: it is served without a projector "
                "(--mmproj)",
                param="messages",
            )
        pieces = [self._projector.media_pieces(item, f"media {i}") for i, item in enumerate(media)]
        return expand(tokens, pieces, marker)

    # -- chat ------------------------------------------------------------------------------

    def builtin_chat_template(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool
    ) -> str:
        from llorch.worker.backend import chat_native

        return chat_native.apply_builtin_template(self.info(), messages, add_generation_prompt)

    # -- embeddings ------------------------------------------------------------------------

    def _embedding_context(self) -> LlamaEmbedder:
        if self._embedder is None:
            info, options = self.info(), self._options
            assert self._model is not None and options is not None
            # the GGUF's own pooling (an embedding model's sentence-transformers config: a
            # decoder such as Qwen3-Embedding pools by its last token), else the option
            declared = self._meta(gguf.Keys.LLM.POOLING_TYPE.format(arch=info.architecture))
            pooling = None if info.embedding_only or declared else options.embedding_pooling
            self._embedder = LlamaEmbedder(
                self._model,
                n_ctx=info.n_ctx_embed,
                threads=options.threads or default_threads(),
                pooling=pooling,
                # BERT's second segment; an LLM reranker (Qwen3) has none
                segments=(
                    open_segments(info.path) if info.reranker and info.embedding_only else None
                ),
            )
        return self._embedder

    def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        return [vector.tolist() for vector in self._embedding_context().embed(inputs)]

    def rank(self, inputs: Sequence[RankInput]) -> list[float]:
        return self._embedding_context().rank(inputs)

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        if self._projector is not None:  # before the model it reads
            self._projector.close()
            self._projector = None
        if self._ctx is not None:
            ll.llama_free(self._ctx)
            self._ctx = None
        if self._adapters is not None:  # after the context that used them, before the model
            self._adapters.close()
            self._adapters = None
        if self._model is not None:
            ll.llama_model_free(self._model)
            self._model = None
        self._vocab = None
        self._text = None
        self._info = None
        if self._placement is not None:  # after the model: its connections closed with it
            self._placement.release()
            self._placement = None
