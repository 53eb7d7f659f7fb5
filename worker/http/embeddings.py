"""Embeddings: `POST /v1/embeddings` in OpenAI's shape and `POST /embed` in the worker
contract's. Both run on the engine's embedding context, never in the generation batch."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from llorch import keys
from llorch.worker.backend.errors import InvalidRequestError
from llorch.worker.backend.protocol import ModelInfo
from llorch.worker.fleet import Fleet
from llorch.worker.http import openapi
from llorch.worker.http.body import parse_json
from llorch.worker.http.openai_schemas import Text, TokenIds

MAX_INPUTS = 2048  # OpenAI's bound on one request's inputs
# An input is never empty: "" and [] have nothing to embed.
Input = Annotated[Text, Field(min_length=1)]
Inputs = (
    Input
    | Annotated[list[Input], Field(min_length=1, max_length=MAX_INPUTS)]
    | TokenIds
    | (Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)])
)


def _as_list(value: Any) -> list[str | list[int]]:
    """One input or many: a string, strings, token ids, or lists of token ids."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [value]
    return list(value)


class EmbeddingRequest(BaseModel):
    """OpenAI's body; `truncate` (an extension) cuts inputs longer than the model takes."""

    model_config = ConfigDict(extra="allow", strict=True)

    input: Inputs
    model: str | None = Field(None, max_length=256)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        None,
        ge=1,
        description="The embeddings' size: fewer than the model's only for a model trained "
        "for it (Matryoshka: EmbeddingGemma, Qwen3-Embedding), whose vectors are cut to their "
        "leading dimensions and normalised again; otherwise a 400.",
    )
    truncate: bool = False
    prompt_name: str | None = Field(
        None,
        max_length=256,
        description="The model's sentence-transformers prompt put before each text (e.g. "
        "Qwen3-Embedding's `query`); unset: its default prompt, if it has one. A name the "
        "model does not declare is a 400 listing the ones it does.",
    )


class EmbedRequest(BaseModel):
    """The worker contract's body: strict, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input: Annotated[list[Input | TokenIds], Field(min_length=1, max_length=MAX_INPUTS)]
    truncate: bool = False
    model: str | None = Field(None, min_length=1, max_length=256)


def build_router(fleet: Fleet) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/embeddings",
        openapi_extra=openapi.body(EmbeddingRequest),
        responses=openapi.errors(400, 401, 403, 413, 415, 421, 503, openai=True),
    )
    async def embeddings(request: Request) -> JSONResponse:
        body = EmbeddingRequest.model_validate(parse_json(await request.body()))
        engine = await fleet.engine(body.model)
        model = engine.loaded()
        result = await engine.embed(
            _as_list(body.input), truncate=body.truncate, prompt_name=body.prompt_name
        )
        vectors = _shortened(body.dimensions, result.vectors, model)
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(row, body.encoding_format)}
            for i, row in enumerate(vectors)
        ]
        usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
        return JSONResponse({"object": "list", "data": data, "model": model.name, "usage": usage})

    @router.post(
        "/embed",
        openapi_extra=openapi.body(EmbedRequest),
        responses=openapi.errors(400, 401, 403, 413, 415, 421, 503),
    )
    async def embed(request: Request) -> JSONResponse:
        body = EmbedRequest.model_validate(parse_json(await request.body()))
        engine = await fleet.engine(body.model)
        model = engine.loaded()
        result = await engine.embed(body.input, truncate=body.truncate)
        return JSONResponse(
            {
                "model": model.name,
                "embeddings": result.vectors.tolist(),
                "prompt_tokens": result.prompt_tokens,
            }
        )

    return router


def _encoded(row: Any, encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, as OpenAI's clients decode it
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in row]


def _shortened(dimensions: int | None, vectors: np.ndarray, model: ModelInfo) -> np.ndarray:
    """The vectors cut to `dimensions` where the model is Matryoshka-trained (and normalised
    again where the model normalises); another size than the model's is a 400 otherwise. A
    model whose card layer-normalises first (nomic-embed-text-v1.5: layer norm, truncate,
    L2 normalisation) is shortened so, always normalised."""
    size = vectors.shape[1]
    if dimensions is None or dimensions == size:
        return vectors
    if model.metadata.get(keys.EMBEDDING_MATRYOSHKA) != "true":
        raise InvalidRequestError(
            f"this model's embeddings have {size} dimensions; it cannot give {dimensions} "
            "(it is not Matryoshka-trained)",
            param="dimensions",
            constraint=f"== {size}",
        )
    if dimensions > size:
        raise InvalidRequestError(
            f"this model's embeddings have {size} dimensions; it cannot give {dimensions}",
            param="dimensions",
            constraint=f"<= {size}",
        )
    layer_norm = model.metadata.get(keys.EMBEDDING_MATRYOSHKA_LAYER_NORM) == "true"
    if layer_norm:  # torch's F.layer_norm over the whole vector, no affine, eps 1e-5
        centred = vectors - vectors.mean(axis=1, keepdims=True)
        vectors = centred / np.sqrt((centred**2).mean(axis=1, keepdims=True) + 1e-5)
    short = vectors[:, :dimensions]
    if model.normalize_embeddings or layer_norm:
        norms = np.linalg.norm(short, axis=1, keepdims=True)
        short = short / np.where(norms > 0, norms, 1.0)
    return short.astype(np.float32)
