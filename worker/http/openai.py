"""OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models.

They run on the same engine as /execute; errors take OpenAI's shape (worker/http/errors.py
answers every path under /v1/ that way).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from llorch.worker.backend.errors import (
    ContextOverflowError,
    InferenceError,
    WorkerError,
)
from llorch.worker.backend.protocol import (
    FinishEvent,
    GenerationRequest,
    ModelInfo,
    PromptScores,
    Scored,
    StopReason,
)
from llorch.worker.backend.protocol import TokenEvent as Token
from llorch.worker.engine import JobRequest, JobStream
from llorch.worker.fim import InfillText
from llorch.worker.fleet import Fleet, ModelNotServed
from llorch.worker.http import logprob_shapes, openai_chat, openapi
from llorch.worker.http.body import parse_json
from llorch.worker.http.errors import openai_body
from llorch.worker.http.infill import fim_prompt
from llorch.worker.http.openai_schemas import (
    COMPLETION_MAX_TOKENS,
    ChatCompletionRequest,
    Choice,
    CompletionRequest,
    Reply,
    SamplingFields,
)
from llorch.worker.http.sampling import json_format, sampling_params
from llorch.worker.http.sse import SSE_HEADERS, frame
from llorch.worker.http.streaming import job_groups, merged, next_or_gone
from llorch.worker.jobs import JobFailed, cancellation_error

_FINISH_REASONS = {
    StopReason.EOS: "stop",
    StopReason.STOP_SEQUENCE: "stop",
    StopReason.MAX_TOKENS: "length",
}
_DONE = b"data: [DONE]\n\n"
_GENERATION_ERRORS = (400, 401, 403, 413, 415, 421, 429, 503, 504)


def fingerprint(model: ModelInfo) -> str:
    """OpenAI's system_fingerprint: what served the request (this model file, this worker)."""
    return f"llorch-{model.sha256[:12]}"


def build_router(fleet: Fleet) -> APIRouter:
    router = APIRouter()
    created = int(time.time())

    def card(name: str, state: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "llorch",
            "state": state,  # an extension: loaded models are ready, others load on demand
        }
        model = fleet.loaded()[name].model if name in fleet.loaded() else None
        if model is not None:  # an extension too: what the model reads (--mmproj adds media)
            body["inputs"] = ["text", *model.media_inputs]
        return body

    @router.get("/v1/models", responses=openapi.errors(401, 421, 503, openai=True))
    async def list_models() -> JSONResponse:
        return JSONResponse(
            {"object": "list", "data": [card(n, st) for n, st in fleet.states().items()]}
        )

    @router.get(
        "/v1/models/{model_id:path}", responses=openapi.errors(401, 404, 421, 503, openai=True)
    )
    async def get_model(model_id: str) -> JSONResponse:
        states = fleet.states()
        if model_id not in states:
            raise ModelNotServed(model_id, list(states))
        return JSONResponse(card(model_id, states[model_id]))

    @router.post(
        "/v1/completions",
        openapi_extra=openapi.body(CompletionRequest),
        responses=openapi.stream("the completion; chunks then [DONE] with stream: true")
        | openapi.errors(*_GENERATION_ERRORS, openai=True),
    )
    async def completions(request: Request) -> Response:
        body = CompletionRequest.model_validate(parse_json(await request.body()))
        engine = await fleet.engine(body.model)
        model = engine.loaded()
        reply = Reply("cmpl", model.name, fingerprint(model), chat=False)
        prompt = body.one_prompt
        max_tokens = COMPLETION_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        if body.suffix and isinstance(prompt, str):
            prompt = await fim_prompt(engine, InfillText(prompt, body.suffix), max_tokens, "suffix")
        job = JobRequest(
            job_id=reply.id,
            prompt=prompt,
            max_tokens=max_tokens,
            generation=GenerationRequest(
                sampling=sampling_params(body),
                stop=body.stops,
                logprobs=body.logprobs,
                echo=body.echo and body.logprobs is not None,
                speculative=body.speculative,
            ),
            lora=body.lora_pairs(),
            json_format=json_format(body),
        )
        streams = await engine.generate_choices(job, body.n)
        echo = None
        if body.echo:
            echo = prompt if isinstance(prompt, str) else await engine.detokenize(prompt)
        shapes = [
            _Shape(chat=False, logprobs=body.logprobs is not None, echo=echo) for _ in streams
        ]
        return await _answer(request, body, streams, reply, shapes)

    @router.post(
        "/v1/chat/completions",
        openapi_extra=openapi.body(ChatCompletionRequest),
        responses=openapi.stream("the completion; chunks then [DONE] with stream: true")
        | openapi.errors(*_GENERATION_ERRORS, openai=True),
    )
    async def chat_completions(request: Request) -> Response:
        body = ChatCompletionRequest.model_validate(parse_json(await request.body()))
        engine = await fleet.chat_engine(body.model)
        model = engine.loaded()
        name = fleet.served_name(engine) or model.name
        reply = Reply("chatcmpl", name, fingerprint(model), chat=True)
        try:
            return await openai_chat.answer(request, body, engine, reply)
        except ContextOverflowError as exc:
            if exc.param == "prompt":  # the prompt of a chat is its messages
                exc.param = "messages"
            raise

    return router


@dataclass
class _Shape:
    """What an answer carries besides its text."""

    chat: bool
    logprobs: bool  # log-probabilities, in the surface's shape
    echo: str | None = None  # the prompt's text, returned before the answer (completions)
    offset: int = 0  # characters of the answer so far (the legacy shape's text_offset)

    def render(self, scored: list[Scored]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        if self.chat:
            return logprob_shapes.chat_logprobs(scored)
        shaped = logprob_shapes.completion_logprobs(scored, self.offset)
        self.offset += sum(len(t) for t in shaped["tokens"])
        return shaped


async def _answer(
    request: Request,
    body: SamplingFields,
    streams: list[JobStream],
    reply: Reply,
    shapes: list[_Shape],
) -> Response:
    if body.stream:
        return StreamingResponse(
            _chunks(reply, streams, body.include_usage, shapes),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    try:
        collected = await asyncio.gather(*(_collect(request, s) for s in streams))
    finally:
        for stream in streams:
            stream.cancel()  # nothing, once each has finished
    choices = [
        Choice((shape.echo or "") + text, _finish_reason(finish, stream), shape.render(scored))
        for (text, scored, finish), stream, shape in zip(collected, streams, shapes, strict=True)
    ]
    return JSONResponse(reply.whole(choices, [finish for _, _, finish in collected]))


def _finish_reason(event: FinishEvent, stream: JobStream) -> str:
    """The finish_reason; a generation that did not end by itself is an error to report."""
    reason = _FINISH_REASONS.get(event.stop_reason)
    if reason is not None:
        return reason
    if event.stop_reason is StopReason.CANCELLED:
        raise cancellation_error(stream.cancel_reason)
    raise InferenceError("the generation failed")


async def _chunks(
    reply: Reply, streams: list[JobStream], include_usage: bool, shapes: list[_Shape]
) -> AsyncIterator[bytes]:
    """SSE chunks of the choices as they come, then `[DONE]`; a failure becomes an
    `{"error": ...}` event (what OpenAI's clients raise on) and ends the stream. Leaving
    early (client gone) cancels every job. Scored tokens whose text is held back ride on
    the next chunk of their choice that has text."""
    scored: list[list[Scored]] = [[] for _ in streams]
    finishes: list[FinishEvent] = []

    def chunk(i: int, text: str | None, finish: str | None = None, role: bool = False) -> bytes:
        logprobs = shapes[i].render(scored[i]) if scored[i] else None
        scored[i].clear()
        body = reply.chunk(text, finish, role=role, logprobs=logprobs, index=i)
        if include_usage:
            body["usage"] = None  # as OpenAI: every chunk but the last has a null usage
        return frame(body)

    try:
        for i, shape in enumerate(shapes):
            if reply.chat:
                yield chunk(i, None, role=True)
            elif shape.echo is not None and not shape.logprobs:
                yield chunk(i, shape.echo)
        async for i, events in merged([job_groups(s) for s in streams]):
            out: list[bytes] = []  # the group's chunks go out in one write
            for event in events:
                if isinstance(event, PromptScores):
                    scored[i].extend(event.tokens)
                    out.append(chunk(i, shapes[i].echo or ""))
                elif isinstance(event, Token):
                    if event.scored is not None:
                        scored[i].append(event.scored)
                    if event.text:  # empty while text is held back (UTF-8, a possible stop)
                        out.append(chunk(i, event.text))
                elif isinstance(event, JobFailed):
                    yield b"".join([*out, frame(openai_body(event.error)[1])])
                    return
                elif isinstance(event, FinishEvent):
                    try:
                        reason = _finish_reason(event, streams[i])
                    except WorkerError as exc:
                        yield b"".join([*out, frame(openai_body(exc)[1])])
                        return
                    finishes.append(event)
                    out.append(chunk(i, None, reason))
            if out:
                yield b"".join(out)
        if include_usage:
            yield frame(reply.usage_chunk(finishes))
        yield _DONE
    finally:
        for stream in streams:
            stream.cancel()


async def _collect(request: Request, stream: JobStream) -> tuple[str, list[Scored], FinishEvent]:
    """The whole text, the scored tokens (the prompt's first, with echo) and the finish event.
    A client that goes away before the end cancels the job (checked every second)."""
    parts: list[str] = []
    scored: list[Scored] = []
    while True:
        event = await next_or_gone(request, stream.next_within)
        if isinstance(event, PromptScores):
            scored.extend(event.tokens)
        elif isinstance(event, Token):
            parts.append(event.text)
            if event.scored is not None:
                scored.append(event.scored)
        elif isinstance(event, JobFailed):
            raise event.error
        elif isinstance(event, FinishEvent):
            return "".join(parts), scored, event
