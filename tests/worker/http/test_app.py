"""The HTTP contract with a scripted backend: validation, SSE framing, readiness, errors."""

from __future__ import annotations

import json
import threading

import pytest
from fakes import FakeBackend
from fastapi.testclient import TestClient
from support import model_loaded

from llorch.worker.server import build_app
from llorch.worker.settings import WorkerSettings

VALID = {"job_id": "j1", "prompt": "Hi", "max_tokens": 5}
JSON = {"content-type": "application/json"}


def client_for(backend: FakeBackend) -> TestClient:
    app = build_app(backend, WorkerSettings(worker_id="w-test"), model_path=lambda: __file__)
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture
def client(open_client):
    return open_client(FakeBackend())


def events_of(response) -> list[dict]:
    assert response.headers["content-type"].startswith("text/event-stream")
    body = response.text
    assert body.endswith("\n\n")
    frames = body.split("\n\n")[:-1]
    for frame in frames:
        assert frame.startswith("data: ") and "\n" not in frame
    return [json.loads(f.removeprefix("data: ")) for f in frames]


def test_execute_streams_started_tokens_metrics_end(client):
    response = client.post("/execute", json=VALID | {"seed": 3})
    assert response.status_code == 200
    events = events_of(response)
    assert [e["type"] for e in events] == ["started"] + ["token"] * 5 + ["metrics", "end"]
    assert events[0]["job_id"] == "j1" and events[0]["model"] == "fake"
    assert events[0]["started_at"].endswith("Z")
    assert [(e["t"], e["i"], e["id"]) for e in events[1:6]] == [
        (c, i, ord(c)) for i, c in enumerate("Hello")
    ]
    assert events[-1] == {
        "type": "end",
        "tokens_out": 5,
        "decode_time_ms": 2.0,
        "stop_reason": "MAX_TOKENS",
    }
    assert events[-2]["seed"] == 3


def test_stop_sequence_matched_is_reported(client):
    events = events_of(client.post("/execute", json=VALID | {"max_tokens": 20, "stop": ["wor"]}))
    assert events[-1]["stop_reason"] == "STOP_SEQUENCE"
    assert events[-1]["stop_sequence_matched"] == "wor"


def test_sampling_fields_reach_the_backend(open_client):
    backend = FakeBackend()
    c = open_client(backend)
    body = VALID | {
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "seed": 9,
        "stop": ["x"],
    }
    assert c.post("/execute", json=body).status_code == 200
    request = backend.requests[0]
    assert request.sampling.temperature == 0.5 and request.sampling.top_p == 0.9
    assert request.sampling.top_k == 40 and request.sampling.min_p == 0.05
    assert request.sampling.repetition_penalty == 1.1 and request.sampling.seed == 9
    assert request.stop == ("x",) and request.max_tokens == 5
    assert request.prompt_tokens == (ord("H"), ord("i"))


@pytest.mark.parametrize(
    ("field", "value", "constraint"),
    [
        ("job_id", "", "min_length 1"),
        ("prompt", "", "min_length 1"),
        ("prompt", "x" * 32769, "max_length 32768"),
        ("max_tokens", 0, "ge 1"),
        ("max_tokens", "5", "type int"),
        ("temperature", -0.1, "ge 0.0"),
        ("temperature", 2.5, "le 2.0"),
        ("top_p", 1.5, "le 1.0"),
        ("top_k", -1, "ge 0"),
        ("repetition_penalty", 0.0, "gt 0.0"),
        ("repetition_penalty", 2.1, "le 2.0"),
        ("min_p", -0.5, "ge 0.0"),
        ("min_p", 1.01, "le 1.0"),
        ("seed", -1, "ge 0"),
        ("seed", 2**32 - 1, "le 4294967294"),
        ("stop", ["a", "b", "c", "d", "e"], "max_items"),
        ("stop", "abc", "type list"),
        ("max_tokens", True, "type int"),
    ],
)
def test_each_rule_is_enforced(client, field, value, constraint):
    response = client.post("/execute", json=VALID | {field: value})
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["field"].split(".")[0] == field
    assert error["constraint"].startswith(constraint), error
    assert field in error["message"]
    if isinstance(value, str) and len(value) > 64:
        # A long value is quoted by its start and its length, never echoed whole.
        assert error["value"] == f"{value[:64]}… ({len(value)} characters)"
    else:
        assert error["value"] == value


@pytest.mark.parametrize(
    ("stop", "constraint"), [([""], "min_length 1"), (["é" * 101], "max_length 100")]
)
def test_each_stop_sequence_is_bounded_in_characters(client, stop, constraint):
    [error] = client.post("/execute", json=VALID | {"stop": stop}).json()["errors"]
    assert error["field"] == "stop.0" and error["constraint"] == constraint
    # 100 characters is the bound, whatever their UTF-8 bytes (as the schema says).
    assert client.post("/execute", json=VALID | {"stop": ["é" * 100]}).status_code == 200


def test_all_errors_are_reported_at_once(client):
    response = client.post(
        "/execute", json={"prompt": "", "max_tokens": 0, "temperature": 9, "nope": 1}
    )
    assert response.status_code == 400
    errors = response.json()["errors"]
    fields = sorted(e["field"] for e in errors)
    assert fields == ["job_id", "max_tokens", "nope", "prompt", "temperature"]
    missing = next(e for e in errors if e["field"] == "job_id")
    assert missing["constraint"] == "required" and "value" not in missing


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b"[1, 2]", b"null"])
def test_malformed_bodies_get_400_in_the_error_shape(client, body):
    response = client.post("/execute", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors and all("message" in e for e in errors)


def test_context_overflow_is_a_400_naming_the_numbers(client):
    response = client.post("/execute", json=VALID | {"max_tokens": 63})
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["field"] == "max_tokens" and error["value"] == 63
    assert "65 exceeds the context of 64" in error["message"]
    assert "at most 62" in error["message"]


def test_prompt_longer_than_context_is_a_400_on_prompt(client):
    response = client.post("/execute", json=VALID | {"prompt": "x" * 80})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "prompt"


def test_server_survives_bad_requests(client):
    for body in (b"{", b"[]", b'{"job_id": 1}'):
        assert client.post("/execute", content=body, headers=JSON).status_code == 400
    assert client.post("/execute", json=VALID).status_code == 200


def test_ready_and_health_while_loading_then_ready():
    gate = threading.Event()
    backend = FakeBackend(load_gate=gate)
    with client_for(backend) as c:
        response = c.get("/ready")
        assert response.status_code == 503
        assert response.json() == {
            "ready": False,
            "state": "loading",
            "models": {"default": "loading"},
        }
        assert c.get("/health").json()["status"] == "healthy"
        assert c.post("/execute", json=VALID).status_code == 503
        gate.set()
        assert model_loaded(c)
        assert c.get("/ready").json() == {
            "ready": True,
            "state": "ready",
            "models": {"fake": "ready"},
        }
        health = c.get("/health").json()
        assert health["model"]["architecture"] == "fake"
        assert health["model"]["sha256"] == "0" * 64
        assert health["backend"]["preset"] == "cpu"
        assert health["devices"][0]["kind"] == "cpu"
        assert health["worker_id"] == "w-test"
    assert backend.closed


def test_ready_reports_load_failure_with_reason(open_client):
    backend = FakeBackend(load_error="bad magic in /models/x.gguf")
    c = open_client(backend)
    response = c.get("/ready")
    assert response.status_code == 503
    assert response.json()["state"] == "error"
    assert "bad magic" in response.json()["reason"]
    assert c.get("/health").json()["status"] == "unhealthy"


def test_tokenize_and_detokenize(client):
    assert client.post("/tokenize", json={"content": "ab"}).json() == {"tokens": [97, 98]}
    assert client.post("/detokenize", json={"tokens": [97, 98]}).json() == {"content": "ab"}
    response = client.post("/detokenize", json={"tokens": [-1]})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "tokens.0"


def test_extended_sampling_fields_reach_the_backend(open_client):
    backend = FakeBackend()
    c = open_client(backend)
    body = VALID | {
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "typical_p": 0.9,
        "logit_bias": {"65": 2.5, "66": -100},
        "grammar": 'root ::= "a"',
    }
    assert c.post("/execute", json=body).status_code == 200
    sampling = backend.requests[0].sampling
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.5, -0.25)
    assert sampling.typical_p == 0.9
    assert sampling.logit_bias == ((65, 2.5), (66, float("-inf")))
    assert sampling.grammar == 'root ::= "a"'


def test_json_schema_becomes_a_grammar(open_client):
    backend = FakeBackend()
    grammar = {"json_grammar": lambda schema: f"root ::= {sorted(schema)}"}
    c = open_client(backend, app=grammar, worker_id="w")
    assert c.post("/execute", json=VALID | {"json_schema": {"type": "object"}}).status_code == 200
    assert backend.requests[0].sampling.grammar == "root ::= ['type']"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"logit_bias": {"x": 1.0}}, "logit_bias"),
        ({"logit_bias": {"5": 101.0}}, "logit_bias"),
        ({"logit_bias": {"99999999": 1.0}}, "logit_bias"),
        ({"typical_p": 0.0}, "typical_p"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"grammar": ""}, "grammar"),
        ({"grammar": "root ::= x", "json_schema": {}}, None),
    ],
)
def test_extended_fields_are_validated(client, extra, field):
    response = client.post("/execute", json=VALID | extra)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    named = (error["field"] or "").split(".")[0] or None
    assert named == field or (field is None and "either" in error["message"])
