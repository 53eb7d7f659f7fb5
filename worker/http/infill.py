"""`POST /infill`: code completion between a prefix and a suffix, in llama-server's shape.

The prompt is the model's FIM token sequence (worker/fim.py, llama-server's
format_prompt_infill); the answer is llama-server's /infill answer: one object with `content`,
`stop`, `tokens_predicted`, `timings`, ...; with `stream: true`, server-sent events of
`{"content", "stop": false, ...}` and a last one with `stop: true`, and no `[DONE]` (llama-server
sends none for its own, non-OpenAI endpoints). `fim_prompt` also serves /v1/completions'
`suffix`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from llorch.worker import fim
from llorch.worker.backend.errors import (
    InferenceError,
    InvalidRequestError,
    WorkerError,
)
from llorch.worker.backend.protocol import FinishEvent, GenerationRequest, StopReason, TokenEvent
from llorch.worker.engine import Engine, JobRequest, JobStream
from llorch.worker.fleet import Fleet
from llorch.worker.http import openapi
from llorch.worker.http.body import parse_json
from llorch.worker.http.errors import openai_body
from llorch.worker.http.infill_schemas import InfillRequest
from llorch.worker.http.sampling import sampling_params
from llorch.worker.http.sse import SSE_HEADERS, EventStream, frame
from llorch.worker.http.streaming import next_or_gone
from llorch.worker.jobs import JobFailed, cancellation_error

_STOP_TYPES = {StopReason.EOS: "eos", StopReason.STOP_SEQUENCE: "word"}


async def fim_prompt(engine: Engine, text: fim.InfillText, n_predict: int, param: str) -> list[int]:
    """The FIM prompt's tokens for the loaded model; a model without FIM tokens is a 400
    naming it and the tokens it lacks."""
    model = engine.loaded()
    lacking = fim.missing(model.fim)
    if lacking:
        raise InvalidRequestError(
            f"the model {model.name!r} cannot fill in the middle: its vocabulary has no FIM "
            f"{', '.join(lacking)} token{'s' if len(lacking) > 1 else ''} (a coder model such "
            "as Qwen 2.5 Coder, StarCoder 2, CodeLlama, DeepSeek-Coder or Codestral has them)",
            param=param,
        )

    async def tokenize(part: str, parse_special: bool) -> list[int]:
        return await engine.tokenize(part, add_special=False, parse_special=parse_special)

    parts = await fim.tokenize(text, tokenize)
    infill = fim.assemble(
        model.fim,
        parts,
        n_batch=fim.fim_batch(model.n_ctx),
        n_predict=n_predict,
        n_ctx=model.n_ctx,
    )
    return infill.tokens


def build_router(fleet: Fleet) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/infill",
        openapi_extra=openapi.body(InfillRequest),
        responses=openapi.stream("the middle; with stream: true, events ending with stop: true")
        | openapi.errors(400, 401, 403, 413, 415, 421, 429, 503, 504),
    )
    async def infill(request: Request) -> Response:
        body = InfillRequest.model_validate(parse_json(await request.body()))
        engine = await fleet.engine(body.model)
        model = engine.loaded()
        text = fim.InfillText(
            prefix=body.input_prefix,
            suffix=body.input_suffix,
            prompt=body.prompt,
            extra=tuple((c.filename, c.text) for c in body.input_extra),
        )
        tokens = await fim_prompt(engine, text, body.n_predict, "input_prefix")
        answer = _Answer(model.name, body.return_tokens, body.response_fields)
        if body.n_predict == 0:  # nothing to generate (llama-server only fills its cache)
            return JSONResponse(answer.final(None, len(tokens), "", []))
        job = JobRequest(
            job_id=f"infill-{uuid.uuid4().hex}",
            prompt=tokens,
            max_tokens=None if body.n_predict < 0 else body.n_predict,
            generation=GenerationRequest(
                sampling=sampling_params(body),
                stop=tuple(body.stop),
                speculative=body.speculative,
            ),
            lora=body.lora_pairs(),
        )
        stream = await engine.generate(job)
        if body.stream:
            return EventStream(_events(stream, answer), headers=SSE_HEADERS)
        try:
            text_out, ids, finish = await _collect(request, stream)
        finally:
            stream.cancel()  # nothing, once it has finished
        _check_finished(finish, stream)
        return JSONResponse(answer.final(finish, finish.prompt_tokens, text_out, ids))

    return router


class _Answer:
    """llama-server's non-OpenAI completion objects (server-task.cpp to_json_non_oaicompat)."""

    def __init__(self, model: str, return_tokens: bool, fields: list[str] | None) -> None:
        self.model = model
        self.return_tokens = return_tokens
        self.fields = fields

    def partial(self, text: str, ids: list[int], n_out: int, n_prompt: int) -> dict[str, Any]:
        return {
            "index": 0,
            "content": text,
            "tokens": ids if self.return_tokens else [],
            "stop": False,
            "tokens_predicted": n_out,
            "tokens_evaluated": n_prompt,
        }

    def final(
        self, finish: FinishEvent | None, n_prompt: int, text: str, ids: list[int]
    ) -> dict[str, Any]:
        n_out = finish.tokens_out if finish is not None else 0
        matched = finish.stop_sequence_matched if finish is not None else None
        body = {
            "index": 0,
            "content": text,
            "tokens": ids if self.return_tokens else [],
            "stop": True,
            "model": self.model,
            "tokens_predicted": n_out,
            "tokens_evaluated": n_prompt,
            "has_new_line": "\n" in text,
            "truncated": False,  # llama-server's: the context ran out (admission refuses that)
            "stop_type": _STOP_TYPES.get(finish.stop_reason, "limit") if finish else "limit",
            "stopping_word": matched or "",
            "tokens_cached": n_prompt + n_out,
            "timings": _timings(finish, n_prompt),
        }
        return body if self.fields is None else _pick(body, self.fields)


def _timings(finish: FinishEvent | None, n_prompt: int) -> dict[str, Any]:
    """llama-server's `timings` (server-task.cpp result_timings)."""
    cached = finish.prompt_cached if finish is not None else 0
    read = n_prompt - cached
    prompt_ms = finish.prompt_time_ms if finish is not None else 0.0
    n_out = finish.tokens_out if finish is not None else 0
    out_ms = finish.decode_time_ms if finish is not None else 0.0
    return {
        "cache_n": cached,
        "prompt_n": read,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / read if read else 0.0,
        "prompt_per_second": 1e3 * read / prompt_ms if prompt_ms else 0.0,
        "predicted_n": n_out,
        "predicted_ms": out_ms,
        "predicted_per_token_ms": out_ms / n_out if n_out else 0.0,
        "predicted_per_second": 1e3 * n_out / out_ms if out_ms else 0.0,
    }


def _pick(body: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """The fields at `paths` ("timings/prompt_n") under their paths, as llama-server's
    json_get_nested_values answers `response_fields`; missing ones are left out."""
    out: dict[str, Any] = {}
    for path in paths:
        node: Any = body
        for part in path.split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            out[path] = node
    return out


def _check_finished(finish: FinishEvent, stream: JobStream) -> None:
    """A generation that did not end by itself (cancelled, failed) is an error to report."""
    if finish.stop_reason is StopReason.CANCELLED:
        raise cancellation_error(stream.cancel_reason)
    if finish.stop_reason is StopReason.ERROR:
        raise InferenceError("the generation failed")


async def _collect(request: Request, stream: JobStream) -> tuple[str, list[int], FinishEvent]:
    """The whole text, the token ids and the finish event. A client that goes away before the
    end cancels the job (checked every second)."""
    parts: list[str] = []
    ids: list[int] = []
    while True:
        event = await next_or_gone(request, stream.next_within)
        if isinstance(event, TokenEvent):
            parts.append(event.text)
            ids.append(event.token_id)
        elif isinstance(event, JobFailed):
            raise event.error
        elif isinstance(event, FinishEvent):
            return "".join(parts), ids, event


async def _events(stream: JobStream, answer: _Answer) -> AsyncIterator[bytes]:
    """One event per piece of text (token ids held back with their text ride along), then
    the final object; a failure becomes `{"error": ...}` and ends the stream, as llama-server
    sends it. Leaving early (client gone) cancels the job."""
    pending: list[int] = []
    n_out = 0
    async with stream:
        async for first in stream:
            out: list[bytes] = []
            for event in [first, *stream.ready()]:
                if isinstance(event, TokenEvent):
                    n_out += 1
                    pending.append(event.token_id)
                    if event.text:
                        chunk = answer.partial(event.text, pending, n_out, stream.prompt_tokens)
                        out.append(frame(chunk))
                        pending = []
                elif isinstance(event, JobFailed):
                    out.append(frame({"error": openai_body(event.error)[1]["error"]}))
                elif isinstance(event, FinishEvent):
                    try:
                        _check_finished(event, stream)
                    except WorkerError as exc:
                        out.append(frame({"error": openai_body(exc)[1]["error"]}))
                    else:
                        out.append(frame(answer.final(event, event.prompt_tokens, "", pending)))
            if out:
                yield b"".join(out)
