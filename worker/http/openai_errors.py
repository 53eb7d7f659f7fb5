"""OpenAI's error shape for the /v1 routes, mapped from every exception in this one place.

`{"error": {"message", "type", "param", "code"}}`: the status comes from the typed exception
(never from its text), `type` from the status as OpenAI and llama-server name them, and `code`
from the worker's own error code. The routes' class (`OpenAIRoute`) applies it, so the
app-wide handlers, which answer in the worker contract's shape, never see these errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError

from llorch.worker.backend.errors import (
    ContextOverflowError,
    DeadlineExceededError,
    DrainingError,
    ModelLoadError,
    NoChatTemplateError,
    NotReadyError,
    OutOfMemoryError,
    QueueFullError,
    ShuttingDownError,
    WorkerError,
)
from llorch.worker.backend.grammar import SchemaError
from llorch.worker.chat import ChatTemplateError
from llorch.worker.http import errors

log = logging.getLogger("llorch.http")


class InvalidParam(Exception):
    """A request parameter refused after validation (it needs the loaded model to check)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFound(Exception):
    def __init__(self, model_id: str) -> None:
        super().__init__(f"the model {model_id!r} does not exist; this worker serves one model")


_STATUS: dict[type[Exception], int] = {
    ContextOverflowError: 400,
    NoChatTemplateError: 400,
    ChatTemplateError: 400,
    SchemaError: 400,
    QueueFullError: 429,
    NotReadyError: 503,
    DrainingError: 503,
    ShuttingDownError: 503,
    ModelLoadError: 503,
    OutOfMemoryError: 503,
    DeadlineExceededError: 504,
}
_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "unavailable_error",
    504: "timeout_error",
}


def error_status(exc: Exception) -> tuple[int, str | None, str | None]:
    """(HTTP status, param, code) of an exception."""
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False)[0]
        return 400, ".".join(str(p) for p in first["loc"]) or None, None
    if isinstance(exc, errors.BadRequest):
        return 400, None, None
    if isinstance(exc, InvalidParam):
        return 400, exc.param, None
    if isinstance(exc, ModelNotFound):
        return 404, "model", "model_not_found"
    if isinstance(exc, ContextOverflowError):
        param = "messages" if exc.prompt_tokens >= exc.n_ctx else "max_tokens"
        return 400, param, "context_length_exceeded"
    if not isinstance(exc, WorkerError):
        return 500, None, None
    status = next((_STATUS[c] for c in type(exc).__mro__ if c in _STATUS), None)
    if status is None:
        # The error classes carry their contract code: any INVALID_REQUEST is the client's.
        status = 400 if exc.code == "INVALID_REQUEST" else 500
    return status, None, exc.code.lower()


def error_message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: "
            f"{e['msg'].removeprefix('Value error, ')}".removeprefix(": ")
            for e in exc.errors(include_url=False)
        )
    if isinstance(exc, WorkerError | errors.BadRequest | InvalidParam | ModelNotFound):
        return str(exc)
    return "internal error"


def error_body(exc: Exception) -> dict[str, Any]:
    status, param, code = error_status(exc)
    kind = _TYPES.get(status, "server_error")
    return {"error": {"message": error_message(exc), "type": kind, "param": param, "code": code}}


def error_response(exc: Exception, request: Request) -> JSONResponse:
    status = error_status(exc)[0]
    if status == 500:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueFullError) else None
    return JSONResponse(error_body(exc), status_code=status, headers=headers)


class OpenAIRoute(APIRoute):
    """Answers every exception of its endpoint in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return error_response(exc, request)

        return route
