"""Rerank: `POST /v1/rerank` and `POST /rerank`, scores of documents against a query from a
cross-encoder, on the engine's embedding context.

Two request shapes, told apart by their list's name:
- Cohere's and Jina's (`documents`, strings or `{"text"}` objects): answered `{"model",
  "results": [{"index", "relevance_score", "document"?}], "usage"}`, best first. The score is
  the model's own (a cross-encoder's logit, as llama-server's /v1/rerank gives it), its
  sigmoid with `normalize: true`.
- Text Embeddings Inference's (`texts`): answered as a list of `{"index", "score", "text"?}`,
  best first; as TEI, the score is the sigmoid unless `raw_scores: true`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from llorch.worker.fleet import Fleet
from llorch.worker.http import openapi
from llorch.worker.http.body import parse_json
from llorch.worker.http.metrics import WorkerMetrics
from llorch.worker.http.openai_schemas import Text

# Cohere's documented bound on one request's documents
MAX_DOCUMENTS = 1000
TRUNCATE = (
    "Cut a pair longer than the model reads (the longer of query and document loses tokens "
    "from its end, as sentence-transformers' CrossEncoder does); false: such a pair is a 400."
)
Query = Annotated[Text, Field(min_length=1)]
INSTRUCTION = (
    "An LLM reranker's task instruction (Qwen3-Reranker's `<Instruct>`) in place of the one its "
    "template carries; a cross-encoder has none (400)."
)


class Document(BaseModel):
    """Cohere's and Jina's object form of a document."""

    model_config = ConfigDict(extra="allow", strict=True)

    text: Text


class RerankRequest(BaseModel):
    """Cohere's and Jina's body; `normalize` and `truncate` are extensions (TEI's names)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = Field(
        None,
        max_length=256,
        description="A served reranker (a cross-encoder whose GGUF pools by rank, or an LLM "
        "reranker); any other model is a 400 naming it.",
    )
    query: Query
    documents: Annotated[list[Text | Document], Field(min_length=1, max_length=MAX_DOCUMENTS)]
    top_n: int | None = Field(None, ge=1, description="Return the best top_n results only.")
    return_documents: bool = False
    normalize: bool = Field(False, description="Scores as the sigmoid of the model's logit.")
    truncate: bool = Field(True, description=TRUNCATE)
    instruction: Annotated[Text, Field(min_length=1)] | None = Field(None, description=INSTRUCTION)


class TeiRerankRequest(BaseModel):
    """Text Embeddings Inference's body."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = Field(None, max_length=256)
    query: Query
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_DOCUMENTS)]
    raw_scores: bool = Field(False, description="The model's logit instead of its sigmoid.")
    return_text: bool = False
    truncate: bool = Field(True, description=TRUNCATE)
    instruction: Annotated[Text, Field(min_length=1)] | None = Field(None, description=INSTRUCTION)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _best_first(scores: list[float]) -> list[int]:
    """Indices by score, highest first; ties keep the documents' order."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def build_router(fleet: Fleet, metrics: WorkerMetrics) -> APIRouter:
    router = APIRouter()

    async def rerank(request: Request) -> JSONResponse:
        raw = parse_json(await request.body())
        if isinstance(raw, dict) and "texts" in raw and "documents" not in raw:
            return await _tei(TeiRerankRequest.model_validate(raw))
        body = RerankRequest.model_validate(raw)
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        engine = await fleet.engine(body.model)
        model = engine.loaded()
        ranking = await engine.rerank(
            body.query, texts, truncate=body.truncate, instruction=body.instruction
        )
        metrics.rerank_pairs.inc(len(ranking.scores))
        results = []
        for i in _best_first(ranking.scores)[: body.top_n]:
            score = ranking.scores[i]
            entry: dict[str, Any] = {
                "index": i,
                "relevance_score": _sigmoid(score) if body.normalize else score,
            }
            if body.return_documents:
                entry["document"] = {"text": texts[i]}
            results.append(entry)
        usage = {"prompt_tokens": ranking.prompt_tokens, "total_tokens": ranking.prompt_tokens}
        return JSONResponse(
            {"object": "list", "model": model.name, "results": results, "usage": usage}
        )

    async def _tei(body: TeiRerankRequest) -> JSONResponse:
        engine = await fleet.engine(body.model)
        ranking = await engine.rerank(
            body.query, body.texts, truncate=body.truncate, instruction=body.instruction
        )
        metrics.rerank_pairs.inc(len(ranking.scores))
        results = []
        for i in _best_first(ranking.scores):
            score = ranking.scores[i]
            entry: dict[str, Any] = {
                "index": i,
                "score": score if body.raw_scores else _sigmoid(score),
            }
            if body.return_text:
                entry["text"] = body.texts[i]
            results.append(entry)
        return JSONResponse(results)

    for path, openai in (("/v1/rerank", True), ("/rerank", False)):
        router.add_api_route(
            path,
            rerank,
            methods=["POST"],
            openapi_extra=openapi.body(RerankRequest),
            responses=openapi.errors(400, 401, 403, 413, 415, 421, 503, openai=openai),
        )
    return router
