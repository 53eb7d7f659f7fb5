"""The worker's HTTP surface: the worker contract (`/execute`, `/health`, `/ready`) and the
controls an orchestrator needs (`DELETE /jobs/{id}`, `/capacity`, `/drain`, `/metrics`).

The app talks to the model only through the Scheduler, and to llama.cpp never: the backend is
handed in, which keeps this layer testable with a fake backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from llorch.worker.backend import grammar
from llorch.worker.backend.errors import NotReadyError, WorkerError
from llorch.worker.backend.grammar import SchemaError
from llorch.worker.backend.protocol import (
    FinishEvent,
    LoadOptions,
    ModelBackend,
    SamplingParams,
    TokenEvent,
)
from llorch.worker.http import errors, openai
from llorch.worker.http.auth import BearerAuth
from llorch.worker.http.metrics import CONTENT_TYPE, JobObserver, WorkerMetrics
from llorch.worker.http.schemas import DetokenizeRequest, ExecuteRequest, TokenizeRequest
from llorch.worker.http.sse import frame
from llorch.worker.models import resolve_model
from llorch.worker.scheduler import JobEvent, JobFailed, JobStarted, Scheduler, State
from llorch.worker.settings import WorkerSettings

log = logging.getLogger("llorch.http")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def create_app(
    backend: ModelBackend,
    settings: WorkerSettings,
    model_path: Callable[[], Path] | None = None,
    json_grammar: Callable[[Any], str] = grammar.json_grammar,
) -> FastAPI:
    """Build the app. The model loads on the scheduler thread when the app starts up, so the
    server answers `/ready` with `loading` while it does. `json_grammar` turns a JSON schema
    into GBNF (the backend's converter imports llama_cpp only when it runs)."""
    options = LoadOptions(
        ctx_size=settings.ctx_size,
        parallel=settings.parallel,
        backend_sampling={"auto": None, "on": True, "off": False}[settings.backend_sampling],
        n_gpu_layers=settings.n_gpu_layers,
        threads=settings.threads,
    )
    scheduler = Scheduler(
        backend,
        model_path or (lambda: resolve_model(settings.model)),
        options,
        max_queue=settings.max_queue,
    )
    metrics = WorkerMetrics(scheduler)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="llorch worker", lifespan=lifespan)
    app.state.scheduler = scheduler
    app.state.started = time.monotonic()
    app.state.settings = settings
    app.state.metrics = metrics
    errors.install(app)
    if settings.api_token is not None:
        app.add_middleware(BearerAuth, token=settings.api_token)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(health_body(scheduler, settings, app.state.started))

    @app.get("/ready")
    async def ready() -> JSONResponse:
        state = scheduler.state
        body: dict[str, Any] = {"ready": state is State.READY, "state": state.value}
        if state is State.ERROR:
            body["reason"] = scheduler.error
        elif state is State.DRAINING and scheduler.wait_drained(0):
            body["state"] = "drained"  # nothing left in flight: safe to stop the process
        return JSONResponse(body, status_code=200 if state is State.READY else 503)

    @app.post("/execute")
    async def execute(request: Request) -> StreamingResponse:
        try:
            return await _execute(request)
        except (WorkerError, errors.BadRequest, ValidationError) as exc:
            status = errors.status_of(exc) if isinstance(exc, WorkerError) else 400
            metrics.rejected(status)
            raise

    async def _execute(request: Request) -> StreamingResponse:
        body = ExecuteRequest.model_validate(errors.parse_json(await request.body()))
        sampling = await asyncio.to_thread(_sampling_of, body, scheduler, json_grammar)
        gen = await asyncio.to_thread(
            scheduler.admit, body.prompt, body.max_tokens, sampling, tuple(body.stop)
        )
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[JobEvent] = asyncio.Queue()
        observe = JobObserver(metrics, len(gen.prompt_tokens))

        def sink(event: JobEvent) -> None:
            observe(event)
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                job.cancel()

        timeout_s = body.timeout_ms / 1000.0 if body.timeout_ms is not None else None
        job = scheduler.submit(body.job_id, gen, sink, timeout_s=timeout_s)
        model_name = scheduler.model.name if scheduler.model else ""
        return StreamingResponse(
            _stream(job.job_id, model_name, events, job.cancel),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.delete("/jobs/{job_id}", status_code=202)
    async def cancel_job(job_id: str) -> JSONResponse:
        # The job's own stream reports the end (stop_reason CANCELLED); this only asks for it.
        if not scheduler.cancel_job(job_id):
            raise errors.JobNotFound(f"no job {job_id!r} is queued or running")
        return JSONResponse({"job_id": job_id, "state": "cancelling"}, status_code=202)

    @app.get("/capacity")
    async def capacity() -> JSONResponse:
        return JSONResponse(capacity_body(scheduler))

    @app.post("/drain", status_code=202)
    async def drain() -> JSONResponse:
        scheduler.drain()
        return JSONResponse({"state": scheduler.state.value}, status_code=202)

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> JSONResponse:
        body = TokenizeRequest.model_validate(errors.parse_json(await request.body()))
        tokens = await asyncio.to_thread(scheduler.tokenize, body.content, body.add_special)
        return JSONResponse({"tokens": tokens})

    @app.post("/detokenize")
    async def detokenize(request: Request) -> JSONResponse:
        body = DetokenizeRequest.model_validate(errors.parse_json(await request.body()))
        if scheduler.model is None:
            raise NotReadyError(f"the model is not ready (state: {scheduler.state})")
        bad = [t for t in body.tokens if not 0 <= t < scheduler.model.n_vocab]
        if bad:
            raise errors.BadRequest(
                [
                    {
                        "field": "tokens",
                        "constraint": f"0 <= id < {scheduler.model.n_vocab}",
                        "message": f"token ids out of the vocabulary: {bad[:10]}",
                        "value": bad[:10],
                    }
                ]
            )
        text = await asyncio.to_thread(scheduler.detokenize, body.tokens)
        return JSONResponse({"content": text})

    app.include_router(openai.build_router(scheduler, metrics=metrics))
    return app


async def _stream(
    job_id: str,
    model_name: str,
    events: asyncio.Queue[JobEvent],
    cancel: Callable[[], None],
) -> AsyncIterator[bytes]:
    """SSE events of one job. Leaving early (client gone, server stopping) cancels the job."""
    finished = False
    try:
        while True:
            event = await events.get()
            if isinstance(event, JobStarted):
                yield frame(
                    {
                        "type": "started",
                        "job_id": job_id,
                        "model": model_name,
                        "started_at": _iso(event.started_at),
                    }
                )
            elif isinstance(event, TokenEvent):
                yield frame(
                    {"type": "token", "t": event.text, "i": event.index, "id": event.token_id}
                )
            elif isinstance(event, FinishEvent):
                finished = True
                seconds = event.decode_time_ms / 1000.0
                yield frame(
                    {
                        "type": "metrics",
                        "tokens_per_sec": event.tokens_out / seconds if seconds > 0 else 0.0,
                        "prompt_tokens": event.prompt_tokens,
                        "prompt_time_ms": round(event.prompt_time_ms, 3),
                        "prompt_cached": event.prompt_cached,
                        "seed": event.seed,
                    }
                )
                end: dict[str, Any] = {
                    "type": "end",
                    "tokens_out": event.tokens_out,
                    "decode_time_ms": round(event.decode_time_ms, 3),
                    "stop_reason": event.stop_reason.value,
                }
                if event.stop_sequence_matched is not None:
                    end["stop_sequence_matched"] = event.stop_sequence_matched
                yield frame(end)
                return
            elif isinstance(event, JobFailed):
                finished = True
                yield frame(
                    {"type": "error", "code": event.error.code, "message": str(event.error)}
                )
                return
    finally:
        if not finished:
            cancel()


def capacity_body(scheduler: Scheduler) -> dict[str, Any]:
    """What an orchestrator routes on; never waits on the model thread."""
    capacity = scheduler.capacity()
    model = scheduler.model
    return {
        "state": capacity.state,
        "slots": {"total": capacity.slots_total, "busy": capacity.slots_busy},
        "queue": {"depth": capacity.queue_depth, "max": capacity.queue_max},
        "kv": {"used": capacity.kv_used, "total": capacity.kv_total},
        "ctx_per_slot": capacity.ctx_per_slot,
        "model": ({"sha256": model.sha256, "architecture": model.architecture} if model else None),
    }


# Draining is healthy: the process must not be restarted while it finishes its work.
_HEALTHY = frozenset({State.LOADING, State.READY, State.DRAINING})


# A logit bias at or below this bans the token (OpenAI's convention for -100).
_BAN = -100.0


def _sampling_of(
    body: ExecuteRequest, scheduler: Scheduler, json_grammar: Callable[[Any], str]
) -> SamplingParams:
    bias = []
    n_vocab = scheduler.model.n_vocab if scheduler.model else 0
    for key, value in body.logit_bias.items():
        token = int(key)
        if not 0 <= token < n_vocab:
            raise errors.BadRequest(
                [
                    {
                        "field": "logit_bias",
                        "constraint": f"0 <= token id < {n_vocab}",
                        "message": f"logit_bias: token id {token} is not in the vocabulary",
                        "value": key,
                    }
                ]
            )
        bias.append((token, float("-inf") if value <= _BAN else value))
    grammar_text = body.grammar
    if body.json_schema is not None:
        try:
            grammar_text = json_grammar(body.json_schema)
        except SchemaError as exc:
            raise errors.BadRequest(
                [{"field": "json_schema", "constraint": "JSON schema", "message": str(exc)}]
            ) from None
    return SamplingParams(
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        typical_p=body.typical_p,
        logit_bias=tuple(bias),
        grammar=grammar_text,
    )


def health_body(scheduler: Scheduler, settings: WorkerSettings, started: float) -> dict[str, Any]:
    """Built only from data cached at load time: it never waits on the model thread."""
    state = scheduler.state
    body: dict[str, Any] = {
        "status": "healthy" if state in _HEALTHY else "unhealthy",
        "state": state.value,
        "worker_id": settings.worker_id,
        "uptime_s": round(time.monotonic() - started, 3),
        "queue_depth": scheduler.queue_depth,
        "active_job": scheduler.active_job_id,
    }
    if state is State.ERROR:
        body["reason"] = scheduler.error
    model = scheduler.model
    if model is not None:
        body["model"] = {
            "path": str(model.path),
            "name": model.name,
            "architecture": model.architecture,
            "description": model.description,
            "size_bytes": model.size_bytes,
            "sha256": model.sha256,
            "n_params": model.n_params,
            "n_ctx": model.n_ctx,
            "n_ctx_train": model.n_ctx_train,
            "n_vocab": model.n_vocab,
            "load_seconds": scheduler.load_seconds,
        }
    info = scheduler.backend_info
    if info is not None:
        body["backend"] = {
            "library": info.library,
            "version": info.version,
            "preset": info.preset,
            "gpu_offload": info.gpu_offload,
            "n_gpu_layers": model.n_gpu_layers if model else None,
            "system_info": info.system_info,
        }
        body["devices"] = [dataclasses.asdict(d) for d in info.devices]
    return body
