"""What operators and orchestrators read and control: `/health`, `/ready`, `/capacity`,
`/drain`, `/metrics`. None of these waits on the model thread."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llorch.worker.backend.errors import OutOfMemoryError, WorkerError
from llorch.worker.engine import Engine, Health
from llorch.worker.http import openapi
from llorch.worker.http.auth import holds_token
from llorch.worker.http.metrics import CONTENT_TYPE, WorkerMetrics
from llorch.worker.scheduler import State
from llorch.worker.settings import WorkerSettings


class PrometheusText(Response):
    media_type = CONTENT_TYPE


# Draining is healthy: the process must not be restarted while it finishes its work.
_HEALTHY = frozenset({State.LOADING, State.READY, State.DRAINING})


def build_router(engine: Engine, settings: WorkerSettings, metrics: WorkerMetrics) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request) -> JSONResponse:
        body = health_body(engine.health(), settings)
        if not holds_token(request.headers.get("authorization"), settings.api_token):
            # Probes hold no token: they get the status, not the model's path or the machine.
            body = {key: body[key] for key in ("status", "state")}
        return JSONResponse(body)

    @router.get("/ready", responses={503: {"description": "not ready: loading, error, draining"}})
    async def ready() -> JSONResponse:
        state = engine.state
        body: dict[str, Any] = {"ready": state is State.READY, "state": state.value}
        error = engine.health().error
        if state is State.ERROR and error is not None:
            body |= failure(error)
        elif engine.drained():
            body["state"] = "drained"  # nothing left in flight: safe to stop the process
        return JSONResponse(body, status_code=200 if state is State.READY else 503)

    @router.get("/lora-adapters", responses=openapi.errors(401, 421, 503))
    async def lora_adapters() -> JSONResponse:
        served = engine.loaded().lora
        return JSONResponse(
            [{"name": s.name, "path": str(s.path), "scale": s.scale} for s in served]
        )

    @router.get("/capacity", responses=openapi.errors(401, 421))
    async def capacity() -> JSONResponse:
        return JSONResponse(capacity_body(engine))

    @router.post("/drain", status_code=202, responses=openapi.errors(401, 403, 421))
    async def drain() -> JSONResponse:
        return JSONResponse({"state": engine.drain().value}, status_code=202)

    @router.get("/metrics", response_class=PrometheusText, responses=openapi.errors(401, 421))
    async def metrics_text() -> Response:
        return PrometheusText(metrics.render())

    return router


def failure(error: WorkerError) -> dict[str, Any]:
    """Why loading failed: the reason, its code, and for memory the sizes asked for."""
    body: dict[str, Any] = {"reason": str(error), "code": error.code}
    if isinstance(error, OutOfMemoryError):
        body["memory"] = {
            "device": error.device,
            "needed_bytes": error.needed_bytes,
            "free_bytes": error.free_bytes,
        }
    return body


def capacity_body(engine: Engine) -> dict[str, Any]:
    """What an orchestrator routes on."""
    capacity = engine.capacity()
    model = engine.model
    return {
        "state": capacity.state,
        "slots": {"total": capacity.slots_total, "busy": capacity.slots_busy},
        "queue": {"depth": capacity.queue_depth, "max": capacity.queue_max},
        "kv": {"used": capacity.kv_used, "total": capacity.kv_total},
        "ctx_per_slot": capacity.ctx_per_slot,
        "model": ({"sha256": model.sha256, "architecture": model.architecture} if model else None),
    }


def health_body(health: Health, settings: WorkerSettings) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": "healthy" if health.state in _HEALTHY else "unhealthy",
        "state": health.state.value,
        "worker_id": settings.worker_id,
        "uptime_s": round(health.uptime_s, 3),
        "queue_depth": health.queue_depth,
        "active_job": health.active_job,
    }
    if health.state is State.ERROR and health.error is not None:
        body |= failure(health.error)
    model = health.model
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
            "load_seconds": health.load_seconds,
        }
    info = health.backend
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
