"""Every exception the app raises, answered in one place, in the shape of the surface asked.

The status and code come from the exception's class (worker/backend/errors.py); this module
only chooses the shape: the worker contract's `{"errors": [{field, constraint, message, value,
code}]}`, OpenAI's `{"error": {message, type, param, code}}` for every path under `/v1/`,
unknown routes, wrong methods and a refused token included, since OpenAI's clients parse that
shape whatever went wrong, and Anthropic's `{"type": "error", "error": {type, message}}` for
`/v1/messages` and the paths under it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from llorch.worker.backend.errors import (
    DrainingError,
    InferenceError,
    InvalidRequestError,
    NotReadyError,
    ShuttingDownError,
    WorkerError,
)
from llorch.worker.http.body import quote
from llorch.worker.http.schemas import field_path, validation_errors

log = logging.getLogger("llorch.http")

OPENAI_PREFIX = "/v1/"
ANTHROPIC_PATH = "/v1/messages"


class Unauthorized(WorkerError):
    """No bearer token, or not the worker's."""

    code = "UNAUTHORIZED"
    status = 401
    openai_code = "invalid_api_key"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class ModelNotFound(WorkerError):
    code = "MODEL_NOT_FOUND"
    status = 404

    def __init__(self, model_id: str, served: str) -> None:
        super().__init__(
            f"the model {model_id!r} does not exist; this worker serves {served!r}",
            param="model",
            value=model_id,
        )


class RouteNotFound(WorkerError):
    code = "NOT_FOUND"
    status = 404


class MethodNotAllowed(WorkerError):
    code = "METHOD_NOT_ALLOWED"
    status = 405

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed

    @property
    def headers(self) -> dict[str, str]:
        # RFC 9110 §15.5.6: a 405 MUST carry Allow, the methods the target does take.
        return {"Allow": ", ".join(self.allowed)}


# -- the worker contract's shape -------------------------------------------------------------


def contract_entry(exc: WorkerError) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "field": exc.param,
        "constraint": exc.constraint,
        "message": str(exc),
        "code": exc.code,
    }
    if exc.value is not None:
        entry["value"] = quote(exc.value)
    return entry


def contract_response(exc: Exception) -> JSONResponse:
    if isinstance(exc, ValidationError | RequestValidationError):
        entries = validation_errors(exc)
        for entry in entries:
            entry["code"] = InvalidRequestError.code
        return JSONResponse({"errors": entries}, status_code=400)
    if not isinstance(exc, WorkerError):
        entry = {"field": None, "constraint": None, "message": "internal error", "code": "INTERNAL"}
        return JSONResponse({"errors": [entry]}, status_code=500)
    return JSONResponse(
        {"errors": [contract_entry(exc)]}, status_code=exc.status, headers=exc.headers
    )


# -- OpenAI's shape --------------------------------------------------------------------------

# OpenAI's and llama-server's names of the error kinds.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
    503: "unavailable_error",
    504: "timeout_error",
}


def openai_body(exc: Exception) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of an exception in OpenAI's shape."""
    if isinstance(exc, ValidationError | RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        message = "; ".join(
            f"{field_path(e['loc'])}: {e['msg'].removeprefix('Value error, ')}".removeprefix(": ")
            for e in errors
        )
        status, param, code = 400, field_path(first["loc"]) or None, None
    elif isinstance(exc, WorkerError):
        status, param, message = exc.status, exc.param, str(exc)
        code = exc.openai_code or exc.code.lower()
    else:
        status, param, code, message = 500, None, None, "internal error"
    kind = _OPENAI_TYPES.get(status, "server_error")
    return status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_response(exc: Exception) -> JSONResponse:
    status, body = openai_body(exc)
    headers = exc.headers if isinstance(exc, WorkerError) else None
    return JSONResponse(body, status_code=status, headers=headers)


# -- Anthropic's shape -----------------------------------------------------------------------

# Anthropic's error types by status (docs.anthropic.com/en/api/errors, and the SDK's ErrorType
# for timeout_error); Anthropic answers other 4xx statuses with invalid_request_error.
_ANTHROPIC_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Anthropic's status for "temporarily unable, try again": its SDKs retry it.
OVERLOADED = 529


def anthropic_body(exc: Exception) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of an exception in Anthropic's shape. It has no `param`, so the
    field at fault leads the message when the message does not name it already. A worker that
    drains, stops or is still loading is overloaded (529) to Anthropic's clients."""
    status, shaped = openai_body(exc)
    message, param = shaped["error"]["message"], shaped["error"]["param"]
    if param and status < 500 and param not in message:
        message = f"{param}: {message}"
    if isinstance(exc, DrainingError | ShuttingDownError | NotReadyError):
        status = OVERLOADED
    kind = _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return status, {"type": "error", "error": {"type": kind, "message": message}}


def is_anthropic(path: str) -> bool:
    return path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")


# -- one handler for the app -----------------------------------------------------------------


def response_for(exc: Exception, path: str) -> JSONResponse:
    """The answer to an error raised before a response started, in the path's surface."""
    if is_anthropic(path):
        status, body = anthropic_body(exc)
        headers = exc.headers if isinstance(exc, WorkerError) else None
        return JSONResponse(body, status_code=status, headers=headers)
    if path.startswith(OPENAI_PREFIX) or path == OPENAI_PREFIX.rstrip("/"):
        return openai_response(exc)
    return contract_response(exc)


def install(app: FastAPI, rejected: Callable[[str, int], None] | None = None) -> None:
    """Answer every exception of the app; `rejected(path, status)` hears of each refusal."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, HTTPException):  # routing: unknown path, method not allowed
            exc = _route_error(request, exc.status_code)
        status = exc.status if isinstance(exc, WorkerError) else 400
        if not isinstance(exc, WorkerError | ValidationError | RequestValidationError):
            status = 500
        if rejected is not None:
            rejected(request.url.path, status)
        if not isinstance(exc, WorkerError | ValidationError | RequestValidationError):
            log.exception("unhandled error on %s %s", request.method, request.url.path)
        elif status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return response_for(exc, request.url.path)

    for kind in (WorkerError, ValidationError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(kind, handle)


# The methods a route may take (RFC 9110 §9); CONNECT and TRACE are never served here.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route takes on the request's path, found by asking the app's routes
    whether each would take the request with that method. Starlette's own 405 names the
    methods of the first route that matched the path only, when several routes share it
    (GET and DELETE /v1/responses/{id} are two routes)."""
    routes = request.app.router.routes
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return allowed


def _route_error(request: Request, status: int) -> WorkerError:
    if status == 405:
        allowed = allowed_methods(request)
        return MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(allowed)}",
            allowed,
        )
    if status == 404:
        return RouteNotFound(f"no route {request.method} {request.url.path}")
    return InferenceError(f"HTTP {status} on {request.url.path}")
