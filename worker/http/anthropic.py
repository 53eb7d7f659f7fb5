"""Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`) as a
translator over the chat core: the body becomes a `ChatRequest`, the core's events become a
`message` (thinking, text and tool_use blocks) or its server-sent events, in the order
Anthropic's streaming documentation gives: message_start, then each block's
content_block_start / content_block_delta / content_block_stop, then message_delta and
message_stop. Errors take Anthropic's shape (worker/http/errors.py, by path).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from llorch.worker.backend.errors import InferenceError, WorkerError
from llorch.worker.chat.stream import ChatStream
from llorch.worker.chat.types import (
    ChatEvent,
    ChatFailed,
    ChatFinish,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)
from llorch.worker.fleet import Fleet
from llorch.worker.http import openapi
from llorch.worker.http.anthropic_request import chat_request, in_our_terms, tool_use_id
from llorch.worker.http.anthropic_schemas import CountTokensRequest, MessagesRequest
from llorch.worker.http.body import parse_json
from llorch.worker.http.errors import anthropic_body
from llorch.worker.http.openai_chat import generation_of
from llorch.worker.http.sse import SSE_HEADERS, frame
from llorch.worker.http.streaming import next_or_gone
from llorch.worker.jobs import cancellation_error

_ERRORS = (400, 401, 403, 404, 413, 415, 421, 429, 503, 504, 529)
PING_INTERVAL_S = 5.0  # a ping while nothing comes (queued, or reading a long prompt)


# -- answers -----------------------------------------------------------------------------------


class _Blocks:
    """The answer's content blocks, built from the core's events in the order they come: a
    block starts where the kind changes (thinking, then text, then each tool_use), which is
    what a stream announces with content_block_start. `feed` returns the stream's events."""

    def __init__(self) -> None:
        self.content: list[dict[str, Any]] = []
        self.open = False
        self._calls: dict[int, int] = {}  # the core's call index -> its block's index

    def feed(self, event: ChatEvent) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        if isinstance(event, ReasoningDelta) and event.text:
            out += self._start({"type": "thinking", "thinking": "", "signature": ""})
            self.content[-1]["thinking"] += event.text
            out.append(self._delta(len(self.content) - 1, "thinking_delta", thinking=event.text))
        elif isinstance(event, TextDelta) and event.text:
            out += self._start({"type": "text", "text": ""})
            self.content[-1]["text"] += event.text
            out.append(self._delta(len(self.content) - 1, "text_delta", text=event.text))
        elif isinstance(event, ToolCallDelta):
            if event.id is not None:
                block = {"type": "tool_use", "id": tool_use_id(event.id), "name": event.name}
                out += self._start(block | {"input": {}}, new=True)
                self._calls[event.index] = len(self.content) - 1
            if event.arguments:
                index = self._calls[event.index]
                out.append(self._delta(index, "input_json_delta", partial_json=event.arguments))
        return out

    def finish(self, finish: ChatFinish) -> list[tuple[str, dict[str, Any]]]:
        """Closes the last block; each tool_use gets its call's whole arguments as `input`. A
        call the answer was cut inside (max_tokens) is not among the core's final calls: the
        whole message leaves its block out; a stream has sent it already."""
        out = self.stop()
        for i, call in enumerate(finish.calls):
            if i not in self._calls:  # never streamed: added whole
                self._calls[i] = len(self.content)
                self.content.append({"type": "tool_use", "id": tool_use_id(call.id)})
                self.content[-1]["name"] = call.name
            self.content[self._calls[i]]["input"] = _arguments(call)
        given_up = {block for i, block in self._calls.items() if i >= len(finish.calls)}
        self.content = [b for k, b in enumerate(self.content) if k not in given_up]
        return out

    def stop(self) -> list[tuple[str, dict[str, Any]]]:
        if not self.open:
            return []
        self.open = False
        return [
            ("content_block_stop", {"type": "content_block_stop", "index": len(self.content) - 1})
        ]

    def _start(self, block: dict[str, Any], new: bool = False) -> list[tuple[str, dict[str, Any]]]:
        if self.open and not new and self.content[-1]["type"] == block["type"]:
            return []
        out = self.stop()
        self.content.append(dict(block))
        self.open = True
        start = {"type": "content_block_start", "index": len(self.content) - 1}
        return [*out, ("content_block_start", start | {"content_block": block})]

    @staticmethod
    def _delta(index: int, kind: str, **fields: str) -> tuple[str, dict[str, Any]]:
        delta = {"type": "content_block_delta", "index": index, "delta": {"type": kind} | fields}
        return "content_block_delta", delta


def _arguments(call: ToolCall) -> dict[str, Any]:
    value = json.loads(call.arguments or "{}")
    if not isinstance(value, dict):
        raise InferenceError(f"the call of {call.name!r} has arguments that are not an object")
    return value


def _stop_reason(finish: ChatFinish, stream: ChatStream) -> str:
    """Anthropic's stop_reason; a message that did not end by itself raises what ended it."""
    if finish.reason is FinishReason.CANCELLED:
        raise cancellation_error(stream.cancel_reason)
    if finish.reason is FinishReason.ERROR:
        raise InferenceError("the generation failed")
    if finish.reason is FinishReason.TOOL_CALLS:
        return "tool_use"
    if finish.reason is FinishReason.LENGTH:
        return "max_tokens"
    return "end_turn" if finish.stop_sequence is None else "stop_sequence"


def _usage(finish: ChatFinish) -> dict[str, int]:
    """As Anthropic counts: input_tokens are the prompt tokens read anew, those found in the
    KV cache are cache_read_input_tokens (their sum is the prompt)."""
    event = finish.event
    return {
        "input_tokens": event.prompt_tokens - event.prompt_cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": event.prompt_cached,
        "output_tokens": event.tokens_out,
    }


def _sse(name: str, data: dict[str, Any]) -> bytes:
    # Anthropic's SDKs dispatch on the event line, so each frame names its event.
    return f"event: {name}\n".encode() + frame(data)


def _error_event(exc: Exception) -> bytes:
    return _sse("error", anthropic_body(exc)[1])


async def _collect(request: Request, stream: ChatStream, blocks: _Blocks) -> ChatFinish:
    """The whole message; a client that goes away cancels it (the caller cancels the job)."""
    while True:
        for event in await next_or_gone(request, stream.next_group):
            if isinstance(event, ChatFailed):
                raise event.error
            if isinstance(event, ChatFinish):
                blocks.finish(event)
                return event
            blocks.feed(event)


async def _events(head: dict[str, Any], stream: ChatStream) -> AsyncIterator[bytes]:
    """The message as Anthropic streams it, with a ping right after message_start and while
    nothing comes; a failure becomes an `error` event and ends the stream."""
    blocks = _Blocks()
    usage = {"input_tokens": stream.prompt_tokens, "output_tokens": 0}
    message = head | {"content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}
    ping = _sse("ping", {"type": "ping"})
    try:
        yield _sse("message_start", {"type": "message_start", "message": message}) + ping
        while True:
            events = await stream.next_group(PING_INTERVAL_S)
            if events is None:
                yield ping
                continue
            out: list[bytes] = []  # a group's events go out in one write
            for event in events:
                if isinstance(event, ChatFailed):
                    yield b"".join([*out, _error_event(event.error)])
                    return
                if isinstance(event, ChatFinish):
                    try:
                        reason = _stop_reason(event, stream)
                    except WorkerError as exc:
                        yield b"".join([*out, _error_event(exc)])
                        return
                    out += [_sse(name, data) for name, data in blocks.finish(event)]
                    delta = {"stop_reason": reason, "stop_sequence": event.stop_sequence}
                    closing = {"type": "message_delta", "delta": delta, "usage": _usage(event)}
                    out += [_sse("message_delta", closing)]
                    yield b"".join([*out, _sse("message_stop", {"type": "message_stop"})])
                    return
                out += [_sse(name, data) for name, data in blocks.feed(event)]
            if out:
                yield b"".join(out)
    finally:
        stream.cancel()


# -- routes ------------------------------------------------------------------------------------


def build_router(fleet: Fleet) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/messages",
        openapi_extra=openapi.body(MessagesRequest),
        responses=openapi.stream("the message; server-sent events with stream: true")
        | openapi.errors(*_ERRORS, anthropic=True),
    )
    async def messages(request: Request) -> Response:
        body = MessagesRequest.model_validate(parse_json(await request.body()))
        engine = await fleet.chat_engine(body.model)
        message_id = f"msg_{uuid.uuid4().hex}"
        chat = chat_request(body, message_id)
        try:
            [stream] = await engine.chat(chat, generation_of(chat))
        except WorkerError as exc:
            raise in_our_terms(exc) from None
        name = fleet.served_name(engine) or engine.loaded().name
        head = {"id": message_id, "type": "message", "role": "assistant", "model": name}
        if body.stream:
            return StreamingResponse(
                _events(head, stream), media_type="text/event-stream", headers=SSE_HEADERS
            )
        blocks = _Blocks()
        try:
            finish = await _collect(request, stream, blocks)
        finally:
            stream.cancel()  # nothing, once it has finished
        reason = _stop_reason(finish, stream)
        return JSONResponse(
            head
            | {
                "content": blocks.content,
                "stop_reason": reason,
                "stop_sequence": finish.stop_sequence,
                "usage": _usage(finish),
            }
        )

    @router.post(
        "/v1/messages/count_tokens",
        openapi_extra=openapi.body(CountTokensRequest),
        responses=openapi.errors(*_ERRORS, anthropic=True),
    )
    async def count_tokens(request: Request) -> JSONResponse:
        body = CountTokensRequest.model_validate(parse_json(await request.body()))
        engine = await fleet.chat_engine(body.model)
        chat = chat_request(body, f"count_{uuid.uuid4().hex}")
        try:
            tokens = await engine.chat_tokens(chat)
        except WorkerError as exc:
            raise in_our_terms(exc) from None
        return JSONResponse({"input_tokens": tokens})

    return router
