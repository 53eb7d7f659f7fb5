"""End to end: a corpus of hostile requests against `llorch serve` with the real model over a
real socket. Each gets its 4xx in the surface's shape, the worker stays up (no request reaches
llama.cpp's grammar recursion, which would kill the process), and afterwards nothing is left
running or queued and generation still works."""

from __future__ import annotations

import json

import httpx
import pytest
from support import FRANCE, WorkerProcess

pytestmark = pytest.mark.e2e

JSON = {"content-type": "application/json"}
EXECUTE = {"job_id": "hostile", "prompt": "Hi", "max_tokens": 4}
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
DEEP = "root ::= " + "(" * 32000 + '"a"' + ")" * 32000


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


# (method, path, body as bytes or JSON, extra headers, status)
CORPUS: list[tuple[str, str, object, dict[str, str], int]] = [
    ("POST", "/execute", EXECUTE | {"grammar": DEEP}, {}, 400),
    ("POST", "/v1/completions", {"prompt": "Hi", "grammar": DEEP}, {}, 400),
    (
        "POST",
        "/execute",
        EXECUTE | {"json_schema": {"type": "string", "maxLength": 20000}},
        {},
        400,
    ),
    (
        "POST",
        "/v1/chat/completions",
        CHAT | {"response_format": _schema_format({"type": "string", "maxLength": 20000})},
        {},
        400,
    ),
    (
        "POST",
        "/execute",
        EXECUTE | {"json_schema": {"type": "array", "minItems": 3_000_000}},
        {},
        400,
    ),
    ("POST", "/execute", b'{"job_id": "n", "prompt": "Hi", "max_tokens": NaN}', {}, 400),
    ("POST", "/v1/completions", b'{"prompt": "Hi", "temperature": Infinity}', {}, 400),
    ("POST", "/execute", b'{"job_id": "s", "prompt": "\\ud800", "max_tokens": 4}', {}, 400),
    ("POST", "/v1/completions", b'{"prompt": "\xed\xa0\x80"}', {}, 400),
    ("POST", "/execute", EXECUTE | {"logit_bias": {"²": 1}}, {}, 400),
    ("POST", "/v1/completions", {"prompt": "Hi", "logit_bias": {"1" * 5000: 1}}, {}, 400),
    ("POST", "/v1/completions", b'{"prompt": "Hi", "logit_bias": {"7": 1e300}}', {}, 400),
    ("POST", "/v1/completions", ("[" * 100_000 + "]" * 100_000).encode(), {}, 400),
    ("POST", "/v1/completions", {"prompt": "x" * (10 << 20)}, {}, 413),
    ("POST", "/execute", json.dumps(EXECUTE).encode(), {"content-type": "text/plain"}, 415),
    ("POST", "/drain", b"", {"origin": "http://evil.example"}, 403),
    ("GET", "/capacity", b"", {"host": "rebound.evil.example"}, 421),
    ("POST", "/execute", EXECUTE | {"grammar": "start ::= x"}, {}, 400),
    ("POST", "/v1/completions", {"prompt": [999_999_999]}, {}, 400),
    ("POST", "/detokenize", {"tokens": [-5]}, {}, 400),
    ("DELETE", "/jobs/nope", b"", {}, 404),
    ("GET", "/v1/nothing", b"", {}, 404),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), CORPUS)
def test_each_hostile_request_gets_its_4xx(
    worker: WorkerProcess, method, path, body, headers, status
):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = JSON | headers if content else headers
    response = httpx.request(
        method, f"{worker.url}{path}", content=content, headers=sent, timeout=60
    )
    assert response.status_code == status, response.text[:500]
    shape = response.json()
    if path.startswith("/v1/"):
        assert set(shape["error"]) == {"message", "type", "param", "code"}
    else:
        assert {"field", "message", "code"} <= set(shape["errors"][0])
    assert len(response.content) < 4096  # bad values are quoted short, never echoed whole


def test_the_worker_is_whole_afterwards(worker: WorkerProcess):
    assert worker.process.poll() is None  # still running: nothing crashed it
    capacity = httpx.get(f"{worker.url}/capacity").json()
    assert capacity["state"] == "ready"
    assert capacity["slots"]["busy"] == 0 and capacity["queue"]["depth"] == 0
    body = {"prompt": FRANCE, "max_tokens": 4, "temperature": 0}
    answer = httpx.post(f"{worker.url}/v1/completions", json=body, timeout=60).json()
    assert answer["choices"][0]["text"].startswith(" Paris")
