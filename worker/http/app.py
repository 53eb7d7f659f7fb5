"""The worker's HTTP app: three thin routers over one engine.

- worker/http/contract.py: the worker contract (`/execute`, `DELETE /jobs/{id}`, tokenizing);
- worker/http/openai.py: OpenAI's API (`/v1/...`);
- worker/http/ops.py: probes and controls (`/health`, `/ready`, `/capacity`, `/drain`,
  `/metrics`).

`create_app` builds nothing but the app: the fleet of engines (and the backends and schedulers
behind them) comes from the composition root, worker/server.py. This layer never imports llama_cpp.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from llorch.worker.fleet import Fleet
from llorch.worker.http import (
    anthropic,
    contract,
    embeddings,
    errors,
    infill,
    openai,
    openapi,
    ops,
    rerank,
    responses,
)
from llorch.worker.http.anthropic_schemas import CountTokensRequest, MessagesRequest
from llorch.worker.http.auth import BearerAuth
from llorch.worker.http.guard import RequestGuard
from llorch.worker.http.infill_schemas import InfillRequest
from llorch.worker.http.metrics import HttpMetrics, WorkerMetrics
from llorch.worker.http.openai_schemas import ChatCompletionRequest, CompletionRequest
from llorch.worker.http.responses_schemas import ResponsesRequest
from llorch.worker.http.schemas import DetokenizeRequest, ExecuteRequest, TokenizeRequest
from llorch.worker.settings import WorkerSettings

# Requests that ask for a generation: refusals of these count in llorch_requests.
GENERATION_PATHS = frozenset(
    {
        "/execute",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/messages",
        "/infill",
    }
)


def create_app(fleet: Fleet, settings: WorkerSettings, metrics: WorkerMetrics) -> FastAPI:
    """The app over a built fleet; starting the app starts it (each model loads on its
    thread, so `/ready` answers `loading` meanwhile), stopping it stops every engine."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        fleet.start()
        try:
            yield
        finally:
            await fleet.stop()

    app = FastAPI(title="llorch worker", lifespan=lifespan)
    app.state.fleet = fleet
    app.state.settings = settings
    app.state.metrics = metrics

    def rejected(path: str, status: int) -> None:
        if path in GENERATION_PATHS:
            metrics.rejected(status)

    errors.install(app, rejected)
    app.include_router(contract.build_router(fleet))
    app.include_router(openai.build_router(fleet))
    app.include_router(infill.build_router(fleet))
    app.include_router(responses.build_router(fleet, settings))
    app.include_router(embeddings.build_router(fleet))
    app.include_router(rerank.build_router(fleet, metrics))
    app.include_router(anthropic.build_router(fleet))
    app.include_router(ops.build_router(fleet, settings, metrics))
    openapi.install(
        app,
        [
            ExecuteRequest,
            TokenizeRequest,
            DetokenizeRequest,
            CompletionRequest,
            ChatCompletionRequest,
            InfillRequest,
            ResponsesRequest,
            embeddings.EmbeddingRequest,
            embeddings.EmbedRequest,
            rerank.RerankRequest,
            rerank.TeiRerankRequest,
            MessagesRequest,
            CountTokensRequest,
            ops.ModelName,
        ],
    )
    # Middleware added last runs first: the metrics (every request, by surface), the request
    # guard (Host, Origin, Content-Type, body size), then CORS, which answers preflights
    # before the token check (a browser never sends credentials on a preflight), then the
    # token.
    if settings.api_token is not None:
        app.add_middleware(BearerAuth, token=settings.api_token)
    origins = settings.cors_origin_list
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["authorization", "content-type", "accept"],
            max_age=600,
        )
    app.add_middleware(RequestGuard, settings=settings)
    app.add_middleware(HttpMetrics, metrics=metrics)
    return app
