"""What operators and orchestrators read and control: `/health`, `/ready`, `/capacity`,
`/drain`, `/metrics`. None of these waits on the model thread."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from llorch.worker.backend.errors import OutOfMemoryError, WorkerError
from llorch.worker.backend.protocol import PREFIX_BLOCK, ModelInfo
from llorch.worker.engine import Engine, Health
from llorch.worker.fleet import Fleet
from llorch.worker.http import openapi
from llorch.worker.http.auth import holds_token
from llorch.worker.http.body import parse_json
from llorch.worker.http.metrics import CONTENT_TYPE, WorkerMetrics
from llorch.worker.jobs import State
from llorch.worker.settings import WorkerSettings


class PrometheusText(Response):
    media_type = CONTENT_TYPE


# Draining is healthy: the process must not be restarted while it finishes its work.
_HEALTHY = frozenset({State.LOADING, State.READY, State.DRAINING})


def build_router(fleet: Fleet, settings: WorkerSettings, metrics: WorkerMetrics) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request) -> JSONResponse:
        engine = fleet.default
        state = overall_state(fleet)
        if engine is not None:
            body = health_body(engine.health(), settings)
        else:  # the default model is unloaded (it loads on demand)
            body = {"worker_id": settings.worker_id, "queue_depth": 0, "active_job": None}
        body["status"] = "healthy" if state in _HEALTHY_NAMES else "unhealthy"
        body["state"] = state
        body["models"] = fleet.states()
        # what --fit chose for each loaded model (the default one's is also model.fit)
        fits = {
            name: dataclasses.asdict(engine.model.fit)
            for name, engine in fleet.loaded().items()
            if engine.model is not None and engine.model.fit is not None
        }
        if fits:
            body["fit"] = fits
        if not holds_token(request.headers.get("authorization"), settings.api_token):
            # Probes hold no token: they get the status, not the model's path or the machine.
            body = {key: body[key] for key in ("status", "state")}
        return JSONResponse(body)

    @router.get("/ready", responses={503: {"description": "not ready: loading, error, draining"}})
    async def ready() -> JSONResponse:
        state = overall_state(fleet)
        body: dict[str, Any] = {"ready": state == "ready", "state": state, "models": fleet.states()}
        for engine in fleet.loaded().values():
            error = engine.health().error
            if engine.state is State.ERROR and error is not None:
                body |= failure(error)
                break
        if state == "draining" and all(e.drained() for e in fleet.loaded().values()):
            body["state"] = "drained"  # nothing left in flight: safe to stop the process
        return JSONResponse(body, status_code=200 if state == "ready" else 503)

    @router.get("/lora-adapters", responses=openapi.errors(401, 421, 503))
    async def lora_adapters() -> JSONResponse:
        served = (await fleet.engine(None)).loaded().lora
        return JSONResponse(
            [{"name": s.name, "path": str(s.path), "scale": s.scale} for s in served]
        )

    @router.get("/capacity", responses=openapi.errors(401, 421))
    async def capacity() -> JSONResponse:
        engines = fleet.loaded()
        default = fleet.default
        body: dict[str, Any] = (
            capacity_body(default) if default is not None else {"state": "unloaded"}
        )
        body["models"] = {
            name: capacity_body(engines[name]) if name in engines else {"state": state}
            for name, state in fleet.states().items()
        }
        return JSONResponse(body)

    @router.post("/drain", status_code=202, responses=openapi.errors(401, 403, 421))
    async def drain() -> JSONResponse:
        fleet.drain()
        return JSONResponse({"state": overall_state(fleet)}, status_code=202)

    @router.post(
        "/models/load",
        openapi_extra=openapi.body(ModelName),
        responses=openapi.errors(400, 401, 403, 404, 413, 415, 421, 503),
    )
    async def load(request: Request) -> JSONResponse:
        body = ModelName.model_validate(parse_json(await request.body()))
        engine = await fleet.load(body.model)
        await asyncio.to_thread(engine.wait_loaded)
        return JSONResponse({"model": body.model, "state": engine.state.value})

    @router.post(
        "/models/unload",
        openapi_extra=openapi.body(ModelName),
        responses=openapi.errors(400, 401, 403, 404, 413, 415, 421),
    )
    async def unload(request: Request) -> JSONResponse:
        body = ModelName.model_validate(parse_json(await request.body()))
        was_loaded = await fleet.unload(body.model)
        return JSONResponse({"model": body.model, "state": "unloaded", "was_loaded": was_loaded})

    @router.get("/metrics", response_class=PrometheusText, responses=openapi.errors(401, 421))
    async def metrics_text() -> Response:
        return PrometheusText(metrics.render())

    return router


class ModelName(BaseModel):
    """`POST /models/load`, `/models/unload`: a model registered at start, by name."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=256)


_HEALTHY_NAMES = frozenset(s.value for s in _HEALTHY) | {"drained"}


def overall_state(fleet: Fleet) -> str:
    """The worker's state: an error or a load in progress of any loaded model first, then
    draining; otherwise ready (a model not loaded loads on demand)."""
    states = {e.state for e in fleet.loaded().values()}
    for state in (State.ERROR, State.LOADING, State.DRAINING, State.STOPPED):
        if state in states:
            return state.value
    return State.READY.value


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
        # What the model reads: text, and "vision" / "audio" with a projector (--mmproj).
        "inputs": ["text", *(model.media_inputs if model else ())],
        # For routing a conversation to the worker holding its prefix (prompt_cache.py).
        "cache": {
            "prefix_block": PREFIX_BLOCK,
            "prefixes": list(capacity.cache.prefixes),
            "entries": capacity.cache.entries,
            "bytes_used": capacity.cache.bytes_used,
            "bytes_budget": capacity.cache.bytes_budget,
            "checkpoints": capacity.cache.checkpoints,
            "checkpoint_bytes": capacity.cache.checkpoint_bytes,
        },
        "model": _model_summary(model) if model else None,
    }


def _model_summary(model: ModelInfo) -> dict[str, Any]:
    summary: dict[str, Any] = {"sha256": model.sha256, "architecture": model.architecture}
    if model.source:  # only a GGUF that says where it came from
        summary["source"] = dict(model.source)
    return summary


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
        if model.source:
            body["model"]["source"] = dict(model.source)
        if model.kv_cache is not None:
            body["model"]["kv_cache"] = dataclasses.asdict(model.kv_cache)
        if model.fit is not None:  # what --fit chose, and from what
            body["model"]["fit"] = dataclasses.asdict(model.fit)
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
