"""The embeddings routes with a scripted backend: shapes, encodings, limits and refusals.
The numbers are checked against sentence-transformers and llama.cpp in the real-model tests
(tests/worker/backend/test_embed.py, tests/worker/test_embeddings_e2e.py)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np
import pytest
from fakes import FakeBackend
from fastapi.testclient import TestClient


@pytest.fixture
def make(open_client) -> Callable[[FakeBackend], TestClient]:
    return lambda backend: open_client(backend, worker_id="w")


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_openai_shape_one_and_many_inputs(make):
    backend = FakeBackend()
    client = make(backend)
    one = client.post("/v1/embeddings", json={"input": "abc", "model": "fake"}).json()
    assert one["object"] == "list" and one["model"] == "fake"
    assert one["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    [item] = one["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    np.testing.assert_allclose(item["embedding"], unit([3, ord("a"), ord("c"), 1]), rtol=1e-6)
    many = client.post("/v1/embeddings", json={"input": ["ab", "xyz"]}).json()
    assert [d["index"] for d in many["data"]] == [0, 1]
    ids = client.post("/v1/embeddings", json={"input": [[5, 6], [7]]}).json()
    assert backend.embedded[-4:] == [[97, 98], [120, 121, 122], [5, 6], [7]]
    assert many["usage"]["prompt_tokens"] == 5 and ids["usage"]["prompt_tokens"] == 3


def test_base64_is_little_endian_float32(make):
    client = make(FakeBackend())
    floats = client.post("/v1/embeddings", json={"input": "hey"}).json()["data"][0]["embedding"]
    body = {"input": "hey", "encoding_format": "base64"}
    encoded = client.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.asarray(floats, dtype=np.float32))


def test_an_input_longer_than_the_model_takes(make):
    client = make(FakeBackend(n_ctx=8))
    response = client.post("/v1/embeddings", json={"input": ["ok", "x" * 20]})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "input[1]"
    assert "20 tokens" in error["message"] and "at most 8" in error["message"]
    cut = client.post("/v1/embeddings", json={"input": "x" * 20, "truncate": True}).json()
    assert cut["usage"]["prompt_tokens"] == 8


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "dimensions": 3}, "dimensions"),
        ({"input": [[-1]]}, "input"),
        ({}, "input"),
    ],
)
def test_bad_requests_are_400_naming_the_field(make, body, param):
    response = make(FakeBackend()).post("/v1/embeddings", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_contract_route(make):
    client = make(FakeBackend())
    answer = client.post("/embed", json={"input": ["ab", [1, 2, 3]]}).json()
    assert answer["model"] == "fake" and answer["prompt_tokens"] == 5
    assert len(answer["embeddings"]) == 2 and len(answer["embeddings"][0]) == 4
    bad = client.post("/embed", json={"input": ["a"], "extra": 1})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "extra"


def test_an_embedding_model_refuses_to_generate(make):
    client = make(FakeBackend(embedding_only=True))
    assert client.post("/v1/embeddings", json={"input": "a"}).status_code == 200
    response = client.post("/v1/completions", json={"prompt": "Hi"})
    assert response.status_code == 400 and "embedding model" in response.json()["error"]["message"]
    execute = client.post("/execute", json={"job_id": "e", "prompt": "Hi", "max_tokens": 2})
    assert execute.status_code == 400
