"""OpenAI chat completions as a translator over the chat core: the request body becomes a
`ChatRequest`, the core's events become a `chat.completion` or its chunks (content,
reasoning_content, tool_calls)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from llorch.worker.backend.errors import InvalidRequestError, WorkerError
from llorch.worker.backend.protocol import GenerationRequest, Scored
from llorch.worker.chat.stream import ChatStream
from llorch.worker.chat.types import (
    ChatEvent,
    ChatFailed,
    ChatFinish,
    ChatRequest,
    FinishReason,
    Message,
    ReasoningDelta,
    ReasoningFormat,
    ReasoningOptions,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
)
from llorch.worker.engine import Engine
from llorch.worker.http import logprob_shapes
from llorch.worker.http.errors import openai_body
from llorch.worker.http.openai_schemas import ChatCompletionRequest, ChatMessageIn, Reply
from llorch.worker.http.sampling import json_format, sampling_params
from llorch.worker.http.sse import SSE_HEADERS, frame
from llorch.worker.http.streaming import merged, next_or_gone
from llorch.worker.jobs import cancellation_error
from llorch.worker.media import CHAT_MARKER, MediaRef

_DONE = b"data: [DONE]\n\n"


def chat_request(body: ChatCompletionRequest, job_id: str) -> ChatRequest:
    """The surface-neutral request of an OpenAI chat body."""
    media: list[MediaRef] = []
    messages = tuple(_message(m, i, media) for i, m in enumerate(body.messages))
    return ChatRequest(
        job_id=job_id,
        messages=messages,
        media=tuple(media),
        tools=tuple(
            Tool(
                t.function.name,
                t.function.description,
                t.function.parameters if t.function.parameters is not None else {},
                bool(t.function.strict),
            )
            for t in body.tools or ()
        ),
        tool_choice=_tool_choice(body),
        parallel_tool_calls=body.parallel_tool_calls,
        json_format=json_format(body),
        sampling=sampling_params(body),
        stop=body.stops,
        max_tokens=body.token_limit,
        logprobs=body.logprob_alternatives,
        lora=body.lora_pairs(),
        speculative=body.speculative,
        reasoning=ReasoningOptions(
            format=None
            if body.reasoning_format is None
            else ReasoningFormat.NONE
            if body.reasoning_format == "none"
            else ReasoningFormat.AUTO,
            effort=body.reasoning_effort,
            budget=None if body.reasoning_budget in (None, -1) else body.reasoning_budget,
        ),
        template_kwargs=body.chat_template_kwargs or {},
        n=body.n,
    )


def generation_of(request: ChatRequest) -> GenerationRequest:
    """What the decoder reads of a chat request, before the core adds grammar and tokens."""
    return GenerationRequest(
        sampling=request.sampling,
        stop=request.stop,
        logprobs=request.logprobs,
        speculative=request.speculative,
    )


def _tool_choice(body: ChatCompletionRequest) -> ToolChoice:
    choice = body.tool_choice
    if choice is None:
        return ToolChoice(ToolChoiceMode.AUTO)
    if isinstance(choice, str):
        return ToolChoice(ToolChoiceMode(choice))
    return ToolChoice(ToolChoiceMode.NAMED, choice.function.name)


def _content(message: ChatMessageIn, index: int, media: list[MediaRef]) -> str:
    """The message's text, with the chat marker where each image goes (its reference added
    to `media`, in order): the engine decodes the images and the model's template places
    them (worker/media.py)."""
    if not isinstance(message.content, list):
        return message.text
    pieces = []
    for j, part in enumerate(message.content):
        if part.image_url is not None and part.type == "image_url":
            param = f"messages[{index}].content[{j}].image_url.url"
            media.append(MediaRef(part.image_url.url, param))
            pieces.append(CHAT_MARKER)
        elif part.input_audio is not None and part.type == "input_audio":
            clip = part.input_audio
            param = f"messages[{index}].content[{j}].input_audio.data"
            media.append(MediaRef(clip.data, param, True, "audio", clip.format))
            pieces.append(CHAT_MARKER)
        else:
            pieces.append(part.text or "")
    return "".join(pieces)


def _message(message: ChatMessageIn, index: int, media: list[MediaRef]) -> Message:
    calls = []
    for j, call in enumerate(message.tool_calls or ()):
        param = f"messages[{index}].tool_calls[{j}].function.arguments"
        try:
            value = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"{param} is not JSON: {exc}", param=param, value=call.function.arguments[:64]
            ) from None
        if not isinstance(value, dict):
            raise InvalidRequestError(f"{param} must be a JSON object", param=param)
        calls.append(ToolCall(call.id, call.function.name, call.function.arguments or "{}"))
    if calls and message.role != "assistant":
        raise InvalidRequestError(
            f"messages[{index}] has tool_calls but role {message.role!r}; only assistant "
            "messages make calls",
            param=f"messages[{index}].tool_calls",
        )
    # "developer" is the newer name of "system"; templates know only the latter.
    role = "system" if message.role == "developer" else message.role
    return Message(
        role,
        _content(message, index, media),
        reasoning=message.reasoning_content,
        tool_calls=tuple(calls),
        tool_call_id=message.tool_call_id if role == "tool" else None,
        name=message.name if role == "tool" else None,
    )


# -- answers -----------------------------------------------------------------------------------


@dataclass
class _Choice:
    """One choice's answer gathered from its events."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    scored: list[Scored] = field(default_factory=list)
    finish: ChatFinish | None = None


def finish_reason(finish: ChatFinish, stream: ChatStream) -> str:
    """OpenAI's finish_reason; a choice that did not end by itself raises what ended it."""
    if finish.reason is FinishReason.CANCELLED:
        raise cancellation_error(stream.cancel_reason)
    if finish.reason is FinishReason.ERROR:
        raise WorkerError("the generation failed")
    return finish.reason.value


def _message_out(choice: _Choice) -> dict[str, Any]:
    assert choice.finish is not None
    calls = choice.finish.calls
    text = "".join(choice.content)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if choice.reasoning:
        message["reasoning_content"] = "".join(choice.reasoning)
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ]
    return message


async def answer(
    request: Request,
    body: ChatCompletionRequest,
    engine: Engine,
    reply: Reply,
) -> JSONResponse | StreamingResponse:
    chat = chat_request(body, reply.id)
    streams = await engine.chat(chat, generation_of(chat))
    if body.stream:
        return StreamingResponse(
            _chunks(reply, streams, body.include_usage, body.logprobs),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    try:
        choices = await asyncio.gather(*(_collect(request, s) for s in streams))
    finally:
        for stream in streams:
            stream.cancel()
    shaped = []
    for index, (choice, stream) in enumerate(zip(choices, streams, strict=True)):
        assert choice.finish is not None
        shaped.append(
            {
                "index": index,
                "message": _message_out(choice),
                "logprobs": logprob_shapes.chat_logprobs(choice.scored) if body.logprobs else None,
                "finish_reason": finish_reason(choice.finish, stream),
            }
        )
    finishes = [c.finish.event for c in choices if c.finish is not None]
    body_out = reply.head("chat.completion") | {
        "choices": shaped,
        "usage": reply.usage(finishes, [c.finish.reasoning_tokens for c in choices if c.finish]),
    }
    return JSONResponse(body_out)


async def _collect(request: Request, stream: ChatStream) -> _Choice:
    """A choice's whole answer; a client that goes away cancels it (checked every second)."""
    choice = _Choice()
    while choice.finish is None:
        for event in await next_or_gone(request, stream.next_group):
            if isinstance(event, TextDelta):
                choice.content.append(event.text)
                choice.scored.extend(event.scored)
            elif isinstance(event, ReasoningDelta):
                choice.reasoning.append(event.text)
            elif isinstance(event, ChatFailed):
                raise event.error
            elif isinstance(event, ChatFinish):
                choice.finish = event
    return choice


def _delta(event: ChatEvent) -> dict[str, Any] | None:
    if isinstance(event, TextDelta):
        return {"content": event.text}
    if isinstance(event, ReasoningDelta):
        return {"reasoning_content": event.text}
    if isinstance(event, ToolCallDelta):
        call: dict[str, Any] = {"index": event.index}
        if event.id is not None:
            call |= {"id": event.id, "type": "function"}
            call["function"] = {"name": event.name, "arguments": event.arguments}
        else:
            call["function"] = {"arguments": event.arguments}
        return {"tool_calls": [call]}
    return None


async def _chunks(
    reply: Reply, streams: list[ChatStream], include_usage: bool, logprobs: bool
) -> AsyncIterator[bytes]:
    """SSE chunks of the choices as they come, then `[DONE]`; a failure becomes an
    `{"error": ...}` event and ends the stream. Leaving early cancels every job."""
    finishes: list[ChatFinish] = []

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        body = reply.head("chat.completion.chunk") | {
            "choices": [
                {"index": index, "delta": delta, "logprobs": extra.get("logprobs")}
                | {"finish_reason": finish}
            ]
        }
        if include_usage:
            body["usage"] = None  # as OpenAI: every chunk but the last has a null usage
        return frame(body)

    try:
        for index in range(len(streams)):
            yield chunk(index, {"role": "assistant", "content": ""})
        async for index, events in merged([s.groups() for s in streams]):
            out: list[bytes] = []  # a group's chunks go out in one write
            for event in events:
                if isinstance(event, ChatFailed):
                    yield b"".join([*out, frame(openai_body(event.error)[1])])
                    return
                if isinstance(event, ChatFinish):
                    try:
                        reason = finish_reason(event, streams[index])
                    except WorkerError as exc:
                        yield b"".join([*out, frame(openai_body(exc)[1])])
                        return
                    finishes.append(event)
                    out.append(chunk(index, {}, reason))
                    continue
                delta = _delta(event)
                if delta is None:
                    continue
                shaped = None
                if logprobs and isinstance(event, TextDelta) and event.scored:
                    shaped = logprob_shapes.chat_logprobs(list(event.scored))
                out.append(chunk(index, delta, logprobs=shaped))
            if out:
                yield b"".join(out)
        if include_usage:
            usage = reply.usage([f.event for f in finishes], [f.reasoning_tokens for f in finishes])
            yield frame(reply.head("chat.completion.chunk") | {"choices": [], "usage": usage})
        yield _DONE
    finally:
        for stream in streams:
            stream.cancel()
