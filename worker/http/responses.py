"""OpenAI's Responses API (`/v1/responses`) as a translator over the chat core: the request
becomes a `ChatRequest` (worker/http/responses_input.py), the core's events become output items
(worker/http/responses_output.py), whole or as the typed events of OpenAI's stream; responses
asked to be stored are kept (worker/http/responses_store.py) for `previous_response_id`, `GET`
and `DELETE`. Shapes follow the `openai` SDK's `Response` and `Response*Event` models."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.convertors import StringConvertor, register_url_convertor

from llorch.worker.backend.errors import WorkerError
from llorch.worker.chat.stream import ChatStream
from llorch.worker.chat.types import ChatFailed, ChatFinish, FinishReason
from llorch.worker.fleet import Fleet
from llorch.worker.http import openapi
from llorch.worker.http.body import parse_json
from llorch.worker.http.errors import openai_body
from llorch.worker.http.openai_chat import generation_of
from llorch.worker.http.responses_input import Turns, chat_request, renamed_params, turns_of
from llorch.worker.http.responses_output import Event, Output, assistant_message, usage
from llorch.worker.http.responses_schemas import ResponsesRequest
from llorch.worker.http.responses_store import ResponseNotFound, ResponseStore, StoredResponse
from llorch.worker.http.sse import SSE_HEADERS
from llorch.worker.http.streaming import next_or_gone
from llorch.worker.jobs import cancellation_error
from llorch.worker.settings import WorkerSettings

_ERRORS = (400, 401, 403, 404, 413, 415, 421, 429, 503, 504)
# The ids this worker gives responses (`resp_` and a hex uuid). The routes that take one match
# no other segment, so that /v1/responses/input_tokens is not a response id to GET or DELETE
# (and a 405 there lists the methods of that path alone).
RESPONSE_ID = "resp_[0-9A-Za-z_-]+"


class _ResponseId(StringConvertor):
    regex = RESPONSE_ID


register_url_convertor("response_id", _ResponseId())
ResponseId = Path(pattern=f"^{RESPONSE_ID}$", description="The id of a stored response.")


def build_router(fleet: Fleet, settings: WorkerSettings) -> APIRouter:
    router = APIRouter()
    store = ResponseStore(settings.responses_store)

    @router.post(
        "/v1/responses",
        openapi_extra=openapi.body(ResponsesRequest),
        responses=openapi.stream("the response; its events with stream: true")
        | openapi.errors(*_ERRORS, openai=True),
    )
    async def create_response(request: Request) -> Response:
        body = ResponsesRequest.model_validate(parse_json(await request.body()))
        engine = await fleet.chat_engine(body.model)
        name = fleet.served_name(engine) or engine.loaded().name
        reply = _Reply(f"resp_{uuid.uuid4().hex}", name, body, turns_of(body, store), store)
        chat = chat_request(body, reply.turns, reply.id)
        with renamed_params(reply.turns.where):
            (stream,) = await engine.chat(chat, generation_of(chat))
        if body.stream:
            return StreamingResponse(
                reply.events(stream), media_type="text/event-stream", headers=SSE_HEADERS
            )
        return JSONResponse(await reply.whole(request, stream))

    @router.post(
        "/v1/responses/input_tokens",
        openapi_extra=openapi.body(ResponsesRequest),
        responses=openapi.errors(*_ERRORS, openai=True),
    )
    async def input_tokens(request: Request) -> JSONResponse:
        body = ResponsesRequest.model_validate(parse_json(await request.body()))
        engine = await fleet.chat_engine(body.model)
        turns = turns_of(body, store)
        with renamed_params(turns.where):
            count = await engine.chat_tokens(chat_request(body, turns, "input-tokens"))
        return JSONResponse({"object": "response.input_tokens", "input_tokens": count})

    @router.get(
        "/v1/responses/{response_id:response_id}",
        responses=openapi.errors(401, 404, 421, openai=True),
    )
    async def get_response(response_id: str = ResponseId) -> JSONResponse:
        return JSONResponse(store.get(response_id).body)

    @router.delete(
        "/v1/responses/{response_id:response_id}",
        responses=openapi.errors(401, 403, 404, 421, openai=True),
    )
    async def delete_response(response_id: str = ResponseId) -> JSONResponse:
        if not store.delete(response_id):
            raise ResponseNotFound(response_id)
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})

    return router


# -- the answer --------------------------------------------------------------------------------


class _Reply:
    """One response: its object (in progress, then final), kept in the store when asked."""

    def __init__(
        self,
        response_id: str,
        model: str,
        body: ResponsesRequest,
        turns: Turns,
        store: ResponseStore,
    ) -> None:
        self.id = response_id
        self.model = model
        self.body = body
        self.turns = turns
        self.store = store
        self.created = int(time.time())
        self.output = Output()

    def obj(self, status: str, finish: ChatFinish | None = None, **extra: Any) -> dict[str, Any]:
        """The response object, echoing the request's settings as OpenAI does."""
        body = self.body
        fmt = body.text.format if body.text is not None else None
        choice = body.tool_choice
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": self.model,
            "output": list(self.output.items),
            "parallel_tool_calls": body.parallel_tool_calls,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": body.reasoning.effort if body.reasoning else None},
            "store": body.store,
            "temperature": body.temperature,
            "text": {
                "format": {"type": "text"}
                if fmt is None
                else fmt.model_dump(by_alias=True, exclude_none=True)
            },
            "tool_choice": choice.model_dump(exclude_none=True)
            if choice is not None and not isinstance(choice, str)
            else choice or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in body.tools or ()],
            "top_p": body.top_p,
            "truncation": "disabled",
            "usage": None if finish is None else usage(finish),
            "metadata": body.metadata or {},
        } | extra

    def finished(self, finish: ChatFinish, stream: ChatStream) -> tuple[list[Event], Event]:
        """(the closing item events, the last event with the final object); the response is
        kept when the request said store."""
        if finish.reason is FinishReason.CANCELLED:
            raise cancellation_error(stream.cancel_reason)
        if finish.reason is FinishReason.ERROR:
            raise WorkerError("the generation failed")
        cut = finish.reason is FinishReason.LENGTH
        closing = self.output.close("incomplete" if cut else "completed")
        # A call the final parse found malformed is the answer's text (the chat core's rule):
        # only the calls it kept are function_call items of the response.
        self.output.keep_calls({call.id for call in finish.calls})
        if cut:
            details = {"reason": "max_output_tokens"}
            kind, obj = "incomplete", self.obj("incomplete", finish, incomplete_details=details)
        else:
            kind, obj = "completed", self.obj("completed", finish)
        if self.body.store:
            kept = (*self.turns.kept, assistant_message(self.output.items))
            self.store.put(StoredResponse(self.id, self.model, obj, kept))
        return closing, {"type": f"response.{kind}", "response": obj}

    async def whole(self, request: Request, stream: ChatStream) -> dict[str, Any]:
        """The whole response; a client that goes away cancels it (checked every second)."""
        try:
            while True:
                for event in await next_or_gone(request, stream.next_group):
                    if isinstance(event, ChatFailed):
                        raise event.error
                    if isinstance(event, ChatFinish):
                        return dict(self.finished(event, stream)[1]["response"])
                    self.output.feed(event)
        finally:
            stream.cancel()

    async def events(self, stream: ChatStream) -> AsyncIterator[bytes]:
        """OpenAI's stream: created, in_progress, each output item's events, then completed,
        incomplete or failed (with the output so far and the error). Leaving early cancels."""
        numbers = itertools.count()

        def framed(events: list[Event]) -> bytes:
            out = []
            for event in events:
                event = event | {"sequence_number": next(numbers)}
                data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
                out.append(f"event: {event['type']}\ndata: {data}\n\n".encode())
            return b"".join(out)

        start = self.obj("in_progress")
        yield framed(
            [
                {"type": "response.created", "response": start},
                {"type": "response.in_progress", "response": start},
            ]
        )
        try:
            async for group in stream.groups():
                out: list[Event] = []
                for event in group:
                    if isinstance(event, ChatFinish | ChatFailed):
                        yield framed(out + self._ending(event, stream))
                        return
                    out += self.output.feed(event)
                if out:
                    yield framed(out)
        finally:
            stream.cancel()

    def _ending(self, event: ChatFinish | ChatFailed, stream: ChatStream) -> list[Event]:
        try:
            if isinstance(event, ChatFailed):
                raise event.error
            closing, last = self.finished(event, stream)
        except WorkerError as exc:
            closing = self.output.close("incomplete")
            status, body = openai_body(exc)
            # The codes a failed response may carry (the SDK's ResponseError): the status's
            # kind; the message says the rest.
            code = "rate_limit_exceeded" if status == 429 else "server_error"
            shaped = {"code": "invalid_prompt" if status == 400 else code}
            shaped["message"] = body["error"]["message"]
            last = {"type": "response.failed", "response": self.obj("failed", error=shaped)}
        return [*closing, last]
