"""The worker contract: `POST /execute` (SSE), `DELETE /jobs/{id}`, `/tokenize`, `/detokenize`.

Each route turns HTTP into an engine call and the engine's events back into the contract's
frames; errors are raised as typed exceptions and answered by the app's one handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llorch.worker.backend.errors import JobNotFoundError
from llorch.worker.backend.protocol import FinishEvent, GenerationRequest, TokenEvent
from llorch.worker.engine import JobRequest, JobStream
from llorch.worker.fleet import Fleet
from llorch.worker.http import openapi
from llorch.worker.http.body import parse_json
from llorch.worker.http.sampling import json_format, sampling_params
from llorch.worker.http.schemas import DetokenizeRequest, ExecuteRequest, TokenizeRequest
from llorch.worker.http.sse import SSE_HEADERS, EventStream, frame
from llorch.worker.jobs import JobEvent, JobFailed, JobStarted
from llorch.worker.media import MediaRef


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def build_router(fleet: Fleet) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/execute",
        openapi_extra=openapi.body(ExecuteRequest) | openapi.STREAM_ONLY,
        responses=openapi.stream("events: started, token…, metrics, end (or error)")
        | openapi.errors(400, 401, 403, 409, 413, 415, 421, 429, 503),
    )
    async def execute(request: Request) -> EventStream:
        body = ExecuteRequest.model_validate(parse_json(await request.body()))
        engine = await fleet.engine(body.model)
        job = JobRequest(
            job_id=body.job_id,
            prompt=body.prompt,
            max_tokens=body.max_tokens,
            generation=GenerationRequest(
                sampling=sampling_params(body),
                stop=tuple(body.stop),
                logprobs=body.top_logprobs,
                speculative=body.speculative,
            ),
            timeout_s=body.timeout_ms / 1000.0 if body.timeout_ms is not None else None,
            lora=body.lora_pairs(),
            json_format=json_format(body),
            media=(
                *(
                    MediaRef(image, f"images[{i}]", bare_base64=True)
                    for i, image in enumerate(body.images or ())
                ),
                *(
                    MediaRef(clip, f"audio[{i}]", bare_base64=True, kind="audio")
                    for i, clip in enumerate(body.audio or ())
                ),
            ),
        )
        stream = await engine.generate(job)
        model = engine.model.name if engine.model else ""
        return EventStream(_frames(stream, model), headers=SSE_HEADERS)

    @router.delete("/jobs/{job_id}", status_code=202, responses=openapi.errors(401, 403, 404, 421))
    async def cancel_job(job_id: str) -> JSONResponse:
        # The job's own stream reports the end (stop_reason CANCELLED); this only asks for it.
        if not any(engine.abort(job_id) for engine in fleet.loaded().values()):
            raise JobNotFoundError(f"no job {job_id!r} is queued or running", param="job_id")
        return JSONResponse({"job_id": job_id, "state": "cancelling"}, status_code=202)

    @router.post(
        "/tokenize",
        openapi_extra=openapi.body(TokenizeRequest),
        responses=openapi.errors(400, 401, 403, 413, 415, 421, 503),
    )
    async def tokenize(request: Request) -> JSONResponse:
        body = TokenizeRequest.model_validate(parse_json(await request.body()))
        engine = await fleet.engine(body.model)
        return JSONResponse({"tokens": await engine.tokenize(body.content, body.add_special)})

    @router.post(
        "/detokenize",
        openapi_extra=openapi.body(DetokenizeRequest),
        responses=openapi.errors(400, 401, 403, 413, 415, 421, 503),
    )
    async def detokenize(request: Request) -> JSONResponse:
        body = DetokenizeRequest.model_validate(parse_json(await request.body()))
        engine = await fleet.engine(body.model)
        return JSONResponse({"content": await engine.detokenize(body.tokens)})

    return router


async def _frames(stream: JobStream, model: str) -> AsyncIterator[bytes]:
    """SSE frames of one job; the events that arrived together go out in one write. Leaving
    early (client gone, server stopping) cancels the job."""
    async with stream:
        async for event in stream:
            yield b"".join(_render(e, model) for e in [event, *stream.ready()])


def _render(event: JobEvent, model: str) -> bytes:
    """One event's SSE frames (the end of a job is two: metrics, then end)."""
    if isinstance(event, JobStarted):
        return frame(
            {
                "type": "started",
                "job_id": event.job_id,
                "model": model,
                "started_at": _iso(event.started_at),
            }
        )
    elif isinstance(event, TokenEvent):
        token: dict[str, Any] = {
            "type": "token",
            "t": event.text,
            "i": event.index,
            "id": event.token_id,
        }
        if event.scored is not None:
            token["logprob"] = event.scored.token.logprob
            token["top_logprobs"] = [
                {
                    "id": t.token_id,
                    "t": t.piece.decode("utf-8", "replace"),
                    "logprob": t.logprob,
                }
                for t in event.scored.top
            ]
        return frame(token)
    elif isinstance(event, FinishEvent):
        end: dict[str, Any] = {
            "type": "end",
            "tokens_out": event.tokens_out,
            "decode_time_ms": round(event.decode_time_ms, 3),
            "stop_reason": event.stop_reason.value,
        }
        if event.stop_sequence_matched is not None:
            end["stop_sequence_matched"] = event.stop_sequence_matched
        return frame(_metrics_frame(event)) + frame(end)
    elif isinstance(event, JobFailed):
        return frame({"type": "error", "code": event.error.code, "message": str(event.error)})
    return b""


def _metrics_frame(event: FinishEvent) -> dict[str, Any]:
    seconds = event.decode_time_ms / 1000.0
    return {
        "type": "metrics",
        "tokens_per_sec": event.tokens_out / seconds if seconds > 0 else 0.0,
        "prompt_tokens": event.prompt_tokens,
        "prompt_time_ms": round(event.prompt_time_ms, 3),
        "prompt_cached": event.prompt_cached,
        "seed": event.seed,
        "drafted": event.drafted,
        "accepted": event.accepted,
        "draft_saved_ms": round(event.draft_saved_ms, 3),
    }
