"""OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models.

They run on the same Scheduler as /execute. Errors take OpenAI's shape, not the worker
contract's: the routes' class maps every exception (worker/http/openai_errors.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from llorch.worker.backend import grammar
from llorch.worker.backend.errors import (
    DeadlineExceededError,
    InferenceError,
    NotReadyError,
    ShuttingDownError,
    WorkerError,
)
from llorch.worker.backend.protocol import (
    ChatMessage,
    FinishEvent,
    GenerationRequest,
    ModelInfo,
    SamplingParams,
    StopReason,
    TokenEvent,
)
from llorch.worker.chat import chat_prompt_tokens
from llorch.worker.http import errors
from llorch.worker.http.metrics import JobObserver, WorkerMetrics
from llorch.worker.http.openai_errors import InvalidParam, ModelNotFound, OpenAIRoute, error_body
from llorch.worker.http.openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    Reply,
    SamplingFields,
)
from llorch.worker.http.sse import frame
from llorch.worker.scheduler import CancelReason, Job, JobEvent, JobFailed, JobStarted, Scheduler

JsonGrammar = Callable[[dict[str, Any] | None], str]

_FINISH_REASONS = {
    StopReason.EOS: "stop",
    StopReason.STOP_SEQUENCE: "stop",
    StopReason.MAX_TOKENS: "length",
}
_DONE = b"data: [DONE]\n\n"


# -- routes ----------------------------------------------------------------------------------


def build_router(
    scheduler: Scheduler,
    json_grammar: JsonGrammar = grammar.json_grammar,
    metrics: WorkerMetrics | None = None,
) -> APIRouter:
    """`json_grammar` turns a JSON schema (None: any object) into GBNF. It lives in the backend
    package, which imports llama_cpp only when a conversion runs."""
    router = APIRouter(route_class=OpenAIRoute)
    created = int(time.time())

    def loaded() -> ModelInfo:
        if scheduler.model is None:
            raise NotReadyError(f"the model is not ready (state: {scheduler.state})")
        return scheduler.model

    def card(model: ModelInfo) -> dict[str, Any]:
        return {"id": model.name, "object": "model", "created": created, "owned_by": "llorch"}

    @router.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [card(loaded())]})

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> JSONResponse:
        model = loaded()
        if model_id != model.name:
            raise ModelNotFound(model_id)
        return JSONResponse(card(model))

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = CompletionRequest.model_validate(errors.parse_json(await request.body()))
        model = loaded()
        sampling = await asyncio.to_thread(sampling_of, body, model, json_grammar)
        max_tokens = body.max_tokens or 16  # OpenAI's default for completions
        prompt = body.prompt
        if isinstance(prompt, str):
            gen = await asyncio.to_thread(scheduler.admit, prompt, max_tokens, sampling, body.stops)
        else:
            bad = [t for t in prompt if not isinstance(t, int) or not 0 <= t < model.n_vocab]
            if bad:
                raise InvalidParam("prompt", f"token ids out of the vocabulary: {bad[:10]}")
            ids = [t for t in prompt if isinstance(t, int)]
            gen = scheduler.admit_tokens(ids, max_tokens, sampling, body.stops)
        if not gen.prompt_tokens:
            raise InvalidParam("prompt", "the prompt is empty (it has no tokens)")
        return await run(request, body, gen, Reply("cmpl", model.name, chat=False))

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = ChatCompletionRequest.model_validate(errors.parse_json(await request.body()))
        model = loaded()
        sampling = await asyncio.to_thread(sampling_of, body, model, json_grammar)
        # "developer" is the newer name of "system"; templates know only the latter.
        messages = [
            ChatMessage("system" if m.role == "developer" else m.role, m.text)
            for m in body.messages
        ]
        tokens = await asyncio.to_thread(chat_prompt_tokens, scheduler, model, messages)
        # Without a limit the answer may use the rest of the context (OpenAI's chat default).
        limit = body.token_limit or max(1, scheduler.capacity().ctx_per_slot - len(tokens))
        gen = scheduler.admit_tokens(tokens, limit, sampling, body.stops)
        return await run(request, body, gen, Reply("chatcmpl", model.name, chat=True))

    async def run(
        request: Request, body: SamplingFields, gen: GenerationRequest, reply: Reply
    ) -> Response:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[JobEvent] = asyncio.Queue()
        observe = JobObserver(metrics, len(gen.prompt_tokens)) if metrics else None

        def sink(event: JobEvent) -> None:
            if observe is not None:
                observe(event)
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                job.cancel()

        job = scheduler.submit(reply.id, gen, sink)
        n_prompt = len(gen.prompt_tokens)
        if body.stream:
            return StreamingResponse(
                _stream(reply, events, job, n_prompt, body.include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text, finish = await _collect(request, events, job)
        return JSONResponse(reply.whole(text, finish[0], n_prompt, finish[1]))

    return router


def sampling_of(
    body: SamplingFields, model: ModelInfo, json_grammar: JsonGrammar
) -> SamplingParams:
    bias = []
    for key, value in (body.logit_bias or {}).items():
        token = int(key)
        if not 0 <= token < model.n_vocab:
            raise InvalidParam(
                "logit_bias", f"token id {token} is not in the vocabulary (0..{model.n_vocab - 1})"
            )
        bias.append((token, -math.inf if value is False else float(value)))
    grammar_text = body.grammar
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        grammar_text = json_grammar(None)
    elif fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:
        grammar_text = json_grammar(fmt.json_schema.schema_)
    return SamplingParams(
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        min_p=body.min_p,
        repetition_penalty=body.penalty,
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        typical_p=body.typical_p,
        logit_bias=tuple(bias),
        grammar=grammar_text,
    )


# -- answers ---------------------------------------------------------------------------------


def _finished(event: FinishEvent, job: Job) -> str:
    """The finish_reason; a generation that did not end by itself is an error to report."""
    reason = _FINISH_REASONS.get(event.stop_reason)
    if reason is not None:
        return reason
    if event.stop_reason is StopReason.CANCELLED:
        if job.cancel_reason is CancelReason.TIMEOUT:
            raise DeadlineExceededError("the request's timeout passed")
        raise ShuttingDownError("the generation was cancelled: the worker is stopping")
    raise InferenceError("the generation failed")


async def _stream(
    reply: Reply, events: asyncio.Queue[JobEvent], job: Job, n_prompt: int, include_usage: bool
) -> AsyncIterator[bytes]:
    """SSE chunks of one job, then `[DONE]`; a failure becomes an `{"error": ...}` event
    (what OpenAI's clients raise on). Leaving early (client gone) cancels the job."""
    finished = False

    def chunk(text: str | None, finish: str | None = None, role: bool = False) -> bytes:
        body = reply.chunk(text, finish, role=role)
        if include_usage:
            body["usage"] = None  # as OpenAI: every chunk but the last has a null usage
        return frame(body)

    try:
        if reply.chat:
            yield chunk(None, role=True)
        while True:
            event = await events.get()
            if isinstance(event, JobStarted):
                continue
            if isinstance(event, TokenEvent):
                if event.text:  # empty while text is held back (UTF-8, a possible stop)
                    yield chunk(event.text)
                continue
            finished = True
            if isinstance(event, JobFailed):
                yield frame(error_body(event.error))
                return
            try:
                reason = _finished(event, job)
            except WorkerError as exc:
                yield frame(error_body(exc))
                return
            yield chunk(None, reason)
            if include_usage:
                yield frame(reply.usage_chunk(n_prompt, event.tokens_out))
            yield _DONE
            return
    finally:
        if not finished:
            job.cancel()


async def _collect(
    request: Request, events: asyncio.Queue[JobEvent], job: Job
) -> tuple[str, tuple[str, int]]:
    """The whole text, the finish_reason and the number of generated tokens. A client that
    goes away before the end cancels the job (checked every second while waiting)."""
    parts: list[str] = []
    finished = False
    try:
        while True:
            # One get() task across waits: cancelling a get() could lose an event.
            get = asyncio.ensure_future(events.get())
            while not get.done():
                await asyncio.wait({get}, timeout=1.0)
                if not get.done() and await request.is_disconnected():
                    get.cancel()
                    raise ShuttingDownError("the client went away")
            event = get.result()
            if isinstance(event, TokenEvent):
                parts.append(event.text)
            elif isinstance(event, JobFailed):
                finished = True
                raise event.error
            elif isinstance(event, FinishEvent):
                finished = True
                return "".join(parts), (_finished(event, job), event.tokens_out)
    finally:
        if not finished:
            job.cancel()
