"""The composition root (backend → scheduler → engine → app) and running the worker:
uvicorn, the ready callback, and a graceful exit on Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from llorch.hugepages import set_huge_page_advice
from llorch.worker.backend import grammar
from llorch.worker.backend.protocol import LoadOptions, ModelBackend
from llorch.worker.engine import Engine
from llorch.worker.fleet import Fleet, ModelEntry
from llorch.worker.http import wire
from llorch.worker.http.app import create_app
from llorch.worker.http.metrics import WorkerMetrics
from llorch.worker.models import (
    converted_projector,
    footprint_bytes,
    host_memory_available,
    resolve_model,
)
from llorch.worker.scheduler import Scheduler, State
from llorch.worker.settings import WorkerSettings

log = logging.getLogger("llorch.worker")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
CALLBACK_ATTEMPTS = 6
CALLBACK_FIRST_DELAY_S = 0.5


def build_app(
    backend: ModelBackend | Callable[[ModelEntry], ModelBackend],
    settings: WorkerSettings,
    model_path: Callable[[], Path] | None = None,
    json_grammar: Callable[[dict[str, Any] | None], str] = grammar.json_grammar,
) -> FastAPI:
    """Backend → scheduler → engine, per model (a fleet), → app. `backend` is one backend (one
    model) or a factory making one for each model it is given. `model_path` finds the GGUF on
    the model thread (default: resolve the model's --model, converting a Hugging Face folder,
    which stops early when the worker is asked to stop)."""
    options = LoadOptions(
        ctx_size=settings.ctx_size,
        parallel=settings.parallel,
        backend_sampling={"auto": None, "on": True, "off": False}[settings.backend_sampling],
        n_gpu_layers=settings.gpu_layers,
        threads=settings.threads,
        rpc_servers=settings.rpc_servers,
        tensor_split=settings.tensor_split_shares,
        embedding_pooling=settings.embedding_pooling,
        speculative=settings.spec_options,
        cache_bytes=settings.cache_ram << 20,
        swa_full=settings.swa_full,
        ctx_checkpoints=settings.ctx_checkpoints,
        checkpoint_every=settings.checkpoint_every,
        fit=settings.fit_options,
    )
    metrics = WorkerMetrics()
    entries = settings.model_entries
    if not callable(backend):
        # One backend holds one model: the built-in chat model would need one of its own.
        entries = [e for e in entries if not e.builtin]
    first = entries[0]
    if len(entries) > 1 and not callable(backend):
        raise ValueError("several models need a backend factory (one backend per model)")

    def make_engine(entry: ModelEntry) -> Engine:
        own = backend(entry) if callable(backend) else backend
        # LoRA adapters belong to the first (default) model.
        loaded = replace(options, lora=settings.lora_specs) if entry == first else options
        if entry != first:  # the draft model too: its vocabulary is the first model's
            loaded = replace(loaded, speculative=replace(options.speculative, draft_model=None))
        loaded = _with_cache_types(loaded, settings, entry)

        loaded = replace(loaded, mmproj=settings.mmproj_for(entry.name, entry == first))

        def resolve() -> Path:
            return resolve_model(entry.source, stopping=scheduler.stopping.is_set)

        def with_projector(path: Path) -> LoadOptions:
            # An HF folder's conversion brings its projector; an explicit --mmproj wins.
            if loaded.mmproj is not None:
                return loaded
            return replace(loaded, mmproj=converted_projector(entry.source, path))

        scheduler = Scheduler(
            own,
            model_path or resolve,
            loaded,
            max_queue=settings.max_queue,
            options_for=with_projector,
        )
        observe = metrics.job_observer
        return Engine(
            scheduler,
            observe_job=observe,
            json_grammar=json_grammar,
            chat_defaults=settings.chat_defaults(entry.name),
            media_limits=settings.media_limits,
        )

    fleet = Fleet(
        entries,
        make_engine,
        max_loaded=settings.max_models,
        keep_alive_s=settings.keep_alive,
        footprint=lambda entry: footprint_bytes(
            entry.source, _with_cache_types(options, settings, entry)
        ),
        free_memory=host_memory_available,
        # The built-in model is the chat model: chat requests that name no model go to it.
        default_chat=next((e.name for e in entries if e.builtin), None),
    )
    metrics.watch(fleet)
    return create_app(fleet, settings, metrics)


def _with_cache_types(
    options: LoadOptions, settings: WorkerSettings, entry: ModelEntry
) -> LoadOptions:
    """The KV cache types and flash attention of this model (--cache-type-k/-v NAME=TYPE),
    and where its tensors go (--override-tensor, --n-cpu-moe)."""
    type_k, type_v = settings.cache_types(entry.name)
    return replace(
        options,
        cache_type_k=type_k,
        cache_type_v=type_v,
        flash_attn=settings.flash_attn,
        tensor_overrides=settings.tensor_overrides(entry.name),
    )


class _Server(uvicorn.Server):
    """uvicorn's server with a draining stop.

    The first Ctrl-C / SIGTERM drains: the worker keeps listening (new requests get 503
    DRAINING, probes keep answering) while in-flight jobs finish, for up to drain_timeout
    seconds; then what is left is cancelled (streams end with stop_reason CANCELLED) and
    uvicorn shuts down. A second signal cancels everything at once.
    """

    def __init__(self, config: uvicorn.Config, fleet: Fleet, drain_timeout: float) -> None:
        super().__init__(config)
        self.fleet = fleet
        self.drain_timeout = drain_timeout
        self._draining = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._draining or self.should_exit:
            log.warning("stop asked again: cancelling in-flight work")
            self.fleet.cancel_all()
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self.fleet.drain()
        log.info("draining: finishing in-flight work (at most %.0fs)", self.drain_timeout)
        # A signal handler must not block the event loop; waiting happens on a thread.
        threading.Thread(target=self._exit_when_drained, name="llorch-drain", daemon=True).start()

    def _exit_when_drained(self) -> None:
        if not self.fleet.wait_drained(self.drain_timeout):
            log.warning(
                "drain timeout of %.0fs passed: cancelling what is left", self.drain_timeout
            )
            self.fleet.cancel_all()
            # Let the cancelled streams send their end event before connections close.
            self.fleet.wait_drained(5.0)
        self.should_exit = True  # uvicorn's main loop polls this flag

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the captured signal once it has shut down, so the process ends
        # "killed by SIGTERM" (status 143). A worker that was asked to stop and stopped
        # cleanly exits 0 instead, which is what supervisors expect.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def callback_payload(settings: WorkerSettings, fleet: Fleet) -> dict[str, Any]:
    """The default model's file and backend, and every served model's state."""
    engine = fleet.default
    health = engine.health() if engine is not None else None
    info = health.backend if health else None
    model = health.model if health else None
    gpu = [d for d in (info.devices if info else ()) if d.kind in ("gpu", "igpu")]
    return {
        "worker_id": settings.worker_id,
        "url": settings.public_url,
        "model": str(model.path) if model else None,
        "models": fleet.states(),
        "backend": (info.preset or ("gpu" if info.gpu_offload else "cpu")) if info else None,
        # Memory the device reports in use (total - free): the model and context on the GPU.
        "vram_bytes": sum(d.memory_total_bytes - d.memory_free_bytes for d in gpu),
    }


async def _send_ready_callback(
    server: uvicorn.Server, fleet: Fleet, settings: WorkerSettings
) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    await asyncio.to_thread(fleet.wait_loaded)
    if any(e.state is not State.READY for e in fleet.loaded().values()):
        log.error("not calling back %s: a model failed to load", settings.callback_url)
        return
    # Imported here: a worker without --callback-url never needs the client (5 MiB resident).
    import httpx

    payload = callback_payload(settings, fleet)
    delay = CALLBACK_FIRST_DELAY_S
    async with httpx.AsyncClient(timeout=10.0) as client:
        for attempt in range(1, CALLBACK_ATTEMPTS + 1):
            try:
                response = await client.post(str(settings.callback_url), json=payload)
                response.raise_for_status()
                log.info("ready callback to %s accepted", settings.callback_url)
                return
            except httpx.HTTPError as exc:
                log.warning(
                    "ready callback attempt %d/%d failed: %s", attempt, CALLBACK_ATTEMPTS, exc
                )
            if attempt < CALLBACK_ATTEMPTS:
                await asyncio.sleep(delay)
                delay *= 2
    log.error("ready callback to %s failed; the worker keeps serving", settings.callback_url)


async def _serve(server: _Server, settings: WorkerSettings) -> None:
    task = None
    if settings.callback_url is not None:
        task = asyncio.create_task(_send_ready_callback(server, server.fleet, settings))
    try:
        await server.serve()
    finally:
        if task is not None:
            task.cancel()


def uvicorn_config(
    app: FastAPI, settings: WorkerSettings, *, port: int | None = None, log_level: str = "info"
) -> uvicorn.Config:
    """How uvicorn serves the app: HTTP/1.1 by h11 with the worker's answer to a request it
    cannot read (431 for a head over wire.MAX_HEAD_BYTES, worker/http/wire.py; h11 even when
    httptools is installed), and an access log without query strings."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        http=wire.H11Protocol,
        h11_max_incomplete_event_size=wire.MAX_HEAD_BYTES,
        log_config=wire.log_config(uvicorn.config.LOGGING_CONFIG),
        log_level=log_level,
        timeout_graceful_shutdown=30,
        lifespan="on",
    )


def serve(settings: WorkerSettings, backend: ModelBackend | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM; returns the exit status."""
    from llorch.worker.backend.llama import LlamaCppBackend

    # A request's multi-MiB arrays (an MP3's frame headers, a batch of embeddings) would each
    # compact memory on first touch (llorch/hugepages.py).
    set_huge_page_advice(False)

    app = build_app(backend if backend is not None else lambda _: LlamaCppBackend(), settings)
    server = _Server(uvicorn_config(app, settings), app.state.fleet, settings.drain_timeout)
    asyncio.run(_serve(server, settings))
    return 0
