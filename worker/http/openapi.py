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
from pydantic.json_schema import models_json_schema

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


# -- rules between fields, in JSON Schema (2020-12, OpenAPI 3.1's dialect) ---------------------
# A model's validators check them; these say the same in the published schema, so that what the
# schema allows is what the worker accepts (`json_schema_extra` of the model).


def given(*names: str) -> dict[str, Any]:
    """Each of `names` is present and not null."""
    return {"required": list(names), "properties": {n: {"not": {"type": "null"}} for n in names}}


def equals(name: str, value: Any) -> dict[str, Any]:
    """`name` is present and is `value`."""
    return {"required": [name], "properties": {name: {"const": value}}}


def when(condition: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    return {"if": condition, "then": then}


def not_both(first: str, second: str) -> dict[str, Any]:
    return {"not": given(first, second)}


def non_empty(name: str) -> dict[str, Any]:
    """`name` is a list of one item or more."""
    return {"required": [name], "properties": {name: {"type": "array", "minItems": 1}}}


def calls_possible(json_answer: dict[str, Any]) -> dict[str, Any]:
    """Not both a constrained answer (`json_answer`, or a grammar) and tools that may be
    called: the chat core refuses the two together (give one, or tool_choice none)."""
    return {
        "not": {
            "allOf": [
                {"anyOf": [given("grammar"), json_answer]},
                non_empty("tools"),
                {"not": equals("tool_choice", "none")},
            ]
        }
    }


def a_tool_to_call(choices: dict[str, Any]) -> dict[str, Any]:
    """A tool_choice in `choices` (one that must call a tool) needs tools to call."""
    return when(
        {"required": ["tool_choice"], "properties": {"tool_choice": choices}}, non_empty("tools")
    )


# A tool's parameters describe an object (or are left out).
OBJECT_PARAMETERS = {"properties": {"type": {"const": "object"}}}
TOOLS = (
    "Tools the model may call. Their names must differ, and a named tool_choice must name one "
    "of them: a request that breaks either is refused with a 400. Each one's parameters are "
    "made into a grammar: a schema the converter cannot make into one is refused with a 400."
)


def rules(*each: dict[str, Any]) -> dict[str, Any]:
    """The rules of one model, for its `json_schema_extra`."""
    return {"allOf": list(each)}


def body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON request body of `model`."""
    ref = {"$ref": _REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


# The headers an error carries to say what to do next.
_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "Bearer (RFC 6750 §3): the token the request lacks",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "seconds to wait before trying again (RFC 9110 §10.2.3)",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}


def errors(
    *statuses: int, openai: bool = False, anthropic: bool = False
) -> dict[int | str, dict[str, Any]]:
    """`responses` for the error statuses of a route, in its surface's shape."""
    shape = AnthropicError if anthropic else OpenAIError if openai else ContractErrors
    return {
        status: {"model": shape, "description": _MEANING[status]}
        | ({"headers": _HEADERS[status]} if status in _HEADERS else {})
        for status in statuses
    }


def stream(description: str) -> dict[int | str, dict[str, Any]]:
    """A 200 that may be answered as server-sent events (beside the route's own type)."""
    return {200: {"description": description, "content": {"text/event-stream": {}}}}


def request_schemas(models: list[type[BaseModel]]) -> dict[str, Any]:
    """The schemas of the request models and of every model they hold, by component name.
    Generated together, so that two models of one name on two surfaces (the `ToolIn` of
    OpenAI's chat and of Anthropic's Messages) stay two components: pydantic names each by
    its module then, which is shortened here to `anthropic_schemas.ToolIn`."""
    refs, generated = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    for model in models:
        # The routes' bodies name their models (`body`) by their class names.
        assert refs[(model, "validation")]["$ref"] == _REF.format(model=model.__name__)
    schemas = generated.get("$defs", {})
    renamed = {
        name: name.rsplit("__", 2)[-2] + "." + name.rsplit("__", 1)[-1]
        for name in schemas
        if "__" in name
    }
    if not renamed:
        return schemas
    refs_to = {_REF.format(model=old): _REF.format(model=new) for old, new in renamed.items()}

    def rename(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: refs_to.get(v, v) if k == "$ref" else rename(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rename(item) for item in node]
        return node

    return {renamed.get(name, name): rename(schema) for name, schema in schemas.items()}


def install(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Publish the request models alongside what FastAPI derives from the routes."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            bodies = request_schemas(models)
            assert not bodies.keys() & schemas.keys(), "a request model has a response's name"
            schemas.update(bodies)
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
