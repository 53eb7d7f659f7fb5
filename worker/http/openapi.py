"""The published OpenAPI document: the real request bodies, each surface's error shape, and
every status each route answers.

The routes read their bodies themselves (to refuse what JSON does not allow, and to answer
errors in their surface's shape), so FastAPI cannot see the bodies: each route declares its
body and its error statuses here, and `install` adds the models to the document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"
# Marks an operation whose 200 is only ever an event stream (never a JSON body).
STREAM_ONLY = {"x-event-stream-only": True}


class ContractError(BaseModel):
    field: str | None
    constraint: str | None
    message: str
    code: str
    value: Any = None


class ContractErrors(BaseModel):
    """The worker contract's error body."""

    errors: list[ContractError]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """OpenAI's error body, for every path under /v1/."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error body, for /v1/messages and the paths under it."""

    type: str
    error: AnthropicErrorDetail


_MEANING = {
    400: "invalid request (the field and the rule it broke are named)",
    401: "no bearer token, or not the worker's",
    403: "a state-changing request from a page whose origin is not allowed",
    404: "no such job, model or route",
    405: "the path does not take this method",
    409: "a job with this id is already in flight",
    413: "the body is larger than --max-body-bytes",
    415: "the body is not application/json",
    421: "a Host this worker does not answer for",
    429: "the queue is full (Retry-After says when to try again)",
    503: "loading, failed to load, draining or stopping",
    504: "the request's timeout passed",
    529: "overloaded: draining, stopping or still loading (Anthropic's routes)",
}


def body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON request body of `model`."""
    ref = {"$ref": _REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def errors(
    *statuses: int, openai: bool = False, anthropic: bool = False
) -> dict[int | str, dict[str, Any]]:
    """`responses` for the error statuses of a route, in its surface's shape."""
    shape = AnthropicError if anthropic else OpenAIError if openai else ContractErrors
    return {status: {"model": shape, "description": _MEANING[status]} for status in statuses}


def stream(description: str) -> dict[int | str, dict[str, Any]]:
    """A 200 that may be answered as server-sent events (beside the route's own type)."""
    return {200: {"description": description, "content": {"text/event-stream": {}}}}


def install(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Publish the request models alongside what FastAPI derives from the routes."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template=_REF)
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            # FastAPI documents a 422 for routes with parameters; this worker answers 400.
            # Event streams are described in words: each event is one JSON object per `data:`.
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    responses.pop("422", None)
                    if operation.pop("x-event-stream-only", False):
                        responses["200"]["content"].pop("application/json", None)
                    for response in responses.values():
                        response.get("content", {}).get("text/event-stream", {}).pop("schema", None)
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
