"""The composition root (backend → scheduler → engine → app) and running the worker:
uvicorn, the ready callback, and a graceful exit on Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from llorch.worker.backend import grammar
from llorch.worker.backend.protocol import LoadOptions, ModelBackend
from llorch.worker.engine import Engine
from llorch.worker.http.app import create_app
from llorch.worker.http.metrics import WorkerMetrics
from llorch.worker.models import resolve_model
from llorch.worker.scheduler import Scheduler, State
from llorch.worker.settings import WorkerSettings

log = logging.getLogger("llorch.worker")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
CALLBACK_ATTEMPTS = 6
CALLBACK_FIRST_DELAY_S = 0.5


def build_app(
    backend: ModelBackend,
    settings: WorkerSettings,
    model_path: Callable[[], Path] | None = None,
    json_grammar: Callable[[dict[str, Any] | None], str] = grammar.json_grammar,
) -> FastAPI:
    """Backend → scheduler → engine → app. `model_path` finds the GGUF on the model thread
    (default: resolve --model, converting a Hugging Face folder, which stops early when the
    worker is asked to stop)."""
    options = LoadOptions(
        ctx_size=settings.ctx_size,
        parallel=settings.parallel,
        backend_sampling={"auto": None, "on": True, "off": False}[settings.backend_sampling],
        n_gpu_layers=settings.n_gpu_layers,
        threads=settings.threads,
        rpc_servers=settings.rpc_servers,
        tensor_split=settings.tensor_split_shares,
        embedding_pooling=settings.embedding_pooling,
        lora=settings.lora_specs,
    )

    def resolve() -> Path:
        return resolve_model(settings.model, stopping=scheduler.stopping.is_set)

    scheduler = Scheduler(backend, model_path or resolve, options, max_queue=settings.max_queue)
    metrics = WorkerMetrics()
    engine = Engine(scheduler, observe_job=metrics.job_observer, json_grammar=json_grammar)
    metrics.watch(engine)
    return create_app(engine, settings, metrics)


class _Server(uvicorn.Server):
    """uvicorn's server with a draining stop.

    The first Ctrl-C / SIGTERM drains: the worker keeps listening (new requests get 503
    DRAINING, probes keep answering) while in-flight jobs finish, for up to drain_timeout
    seconds; then what is left is cancelled (streams end with stop_reason CANCELLED) and
    uvicorn shuts down. A second signal cancels everything at once.
    """

    def __init__(self, config: uvicorn.Config, engine: Engine, drain_timeout: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.drain_timeout = drain_timeout
        self._draining = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._draining or self.should_exit:
            log.warning("stop asked again: cancelling in-flight work")
            self.engine.cancel_all()
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self.engine.drain()
        log.info("draining: finishing in-flight work (at most %.0fs)", self.drain_timeout)
        # A signal handler must not block the event loop; waiting happens on a thread.
        threading.Thread(target=self._exit_when_drained, name="llorch-drain", daemon=True).start()

    def _exit_when_drained(self) -> None:
        if not self.engine.wait_drained(self.drain_timeout):
            log.warning(
                "drain timeout of %.0fs passed: cancelling what is left", self.drain_timeout
            )
            self.engine.cancel_all()
            # Let the cancelled streams send their end event before connections close.
            self.engine.wait_drained(5.0)
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


def callback_payload(settings: WorkerSettings, engine: Engine) -> dict[str, Any]:
    health = engine.health()
    info = health.backend
    model = health.model
    gpu = [d for d in (info.devices if info else ()) if d.kind in ("gpu", "igpu")]
    return {
        "worker_id": settings.worker_id,
        "url": settings.public_url,
        "model": str(model.path) if model else None,
        "backend": (info.preset or ("gpu" if info.gpu_offload else "cpu")) if info else None,
        # Memory the device reports in use (total - free): the model and context on the GPU.
        "vram_bytes": sum(d.memory_total_bytes - d.memory_free_bytes for d in gpu),
    }


async def _send_ready_callback(
    server: uvicorn.Server, engine: Engine, settings: WorkerSettings
) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    await asyncio.to_thread(engine.wait_loaded)
    if engine.state is not State.READY:
        log.error("not calling back %s: the model failed to load", settings.callback_url)
        return
    payload = callback_payload(settings, engine)
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
        task = asyncio.create_task(_send_ready_callback(server, server.engine, settings))
    try:
        await server.serve()
    finally:
        if task is not None:
            task.cancel()


def serve(settings: WorkerSettings, backend: ModelBackend | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM; returns the exit status."""
    if backend is None:
        from llorch.worker.backend.llama import LlamaCppBackend

        backend = LlamaCppBackend()
    app = build_app(backend, settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=30,
        lifespan="on",
    )
    server = _Server(config, app.state.engine, settings.drain_timeout)
    asyncio.run(_serve(server, settings))
    return 0
