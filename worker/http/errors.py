"""Every exception the worker raises, mapped to an HTTP answer in this one place."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from llorch.worker.backend.errors import (
    ContextOverflowError,
    DeadlineExceededError,
    DrainingError,
    DuplicateJobError,
    ModelLoadError,
    NotReadyError,
    OutOfMemoryError,
    QueueFullError,
    ShuttingDownError,
    WorkerError,
)
from llorch.worker.http.schemas import validation_errors

log = logging.getLogger("llorch.http")


class Unauthorized(WorkerError):
    """No bearer token, or not the worker's."""

    code = "UNAUTHORIZED"


class JobNotFound(WorkerError):
    """No job with this id is queued or running."""

    code = "NOT_FOUND"


_STATUS: dict[type[WorkerError], int] = {
    ContextOverflowError: 400,
    Unauthorized: 401,
    JobNotFound: 404,
    QueueFullError: 429,
    DuplicateJobError: 409,
    NotReadyError: 503,
    ShuttingDownError: 503,
    DrainingError: 503,
    ModelLoadError: 503,
    OutOfMemoryError: 503,
    DeadlineExceededError: 504,
}


class BadRequest(Exception):
    """A request the worker refuses, with entries in the contract's error shape."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["message"] if errors else "bad request")
        self.errors = errors


def status_of(exc: WorkerError) -> int:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500


def error_entry(exc: WorkerError) -> dict[str, Any]:
    if isinstance(exc, ContextOverflowError):
        field = "prompt" if exc.prompt_tokens >= exc.n_ctx else "max_tokens"
        return {
            "field": field,
            "constraint": f"prompt_tokens + max_tokens <= {exc.n_ctx}",
            "message": str(exc),
            "value": exc.prompt_tokens if field == "prompt" else exc.max_tokens,
            "code": exc.code,
        }
    return {"field": None, "constraint": None, "message": str(exc), "code": exc.code}


def headers_of(exc: WorkerError) -> dict[str, str]:
    """Headers that tell a client what to do next (when to retry, how to authenticate)."""
    if isinstance(exc, QueueFullError):
        return {"Retry-After": str(max(1, exc.retry_after_s))}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    return {}


def response_for(exc: WorkerError) -> JSONResponse:
    """The answer to an error raised before a stream started; middleware uses it too."""
    return JSONResponse(
        {"errors": [error_entry(exc)]}, status_code=status_of(exc), headers=headers_of(exc)
    )


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(
            [{"field": None, "constraint": "JSON", "message": f"malformed JSON body: {exc}"}]
        ) from None


def install(app: FastAPI) -> None:
    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"errors": exc.errors}, status_code=400)

    @app.exception_handler(ValidationError)
    async def _invalid(request: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse({"errors": validation_errors(exc)}, status_code=400)

    @app.exception_handler(WorkerError)
    async def _worker_error(request: Request, exc: WorkerError) -> JSONResponse:
        if status_of(exc) >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return response_for(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        entry = {"field": None, "constraint": None, "message": "internal error", "code": "INTERNAL"}
        return JSONResponse({"errors": [entry]}, status_code=500)
