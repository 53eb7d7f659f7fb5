"""Hostile input, in-process with a scripted backend: each case gets its 4xx in the surface's
shape and names what is wrong. The same corpus runs against a real worker and the real model
in tests/worker/test_hostile_e2e.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from fakes import FakeBackend
from fastapi.testclient import TestClient

JSON = {"content-type": "application/json"}
EXECUTE = {"job_id": "h", "prompt": "Hi", "max_tokens": 4}
COMPLETION = {"prompt": "Hi", "max_tokens": 4}
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
TOKEN = "t0ken-for-hostile-tests"


@pytest.fixture
def make(open_client) -> Callable[..., TestClient]:
    return lambda **settings: open_client(FakeBackend(n_ctx=512), worker_id="w", **settings)


@pytest.fixture
def client(make) -> TestClient:
    return make()


def contract_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    [entry] = response.json()["errors"]
    return entry


def openai_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


# -- 1. grammars that would crash llama.cpp's parser ----------------------------------------

DEEP_GRAMMAR = "root ::= " + "(" * 32000 + '"a"' + ")" * 32000
LONG_STRING = {"type": "string", "maxLength": 20000}
MANY_ITEMS = {"type": "array", "items": {"type": "integer"}, "minItems": 3_000_000}


def test_a_deeply_nested_grammar_is_a_400(client):
    entry = contract_error(client.post("/execute", json=EXECUTE | {"grammar": DEEP_GRAMMAR}), 400)
    assert entry["field"] == "grammar" and "32000" in entry["message"]
    body = COMPLETION | {"grammar": DEEP_GRAMMAR}
    assert openai_error(client.post("/v1/completions", json=body), 400)["param"] == "grammar"


@pytest.mark.parametrize("schema", [LONG_STRING, MANY_ITEMS])
def test_schemas_that_expand_too_far_are_a_400(client, schema):
    entry = contract_error(client.post("/execute", json=EXECUTE | {"json_schema": schema}), 400)
    assert entry["field"] == "json_schema" and "1024" in entry["message"]
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    error = openai_error(
        client.post("/v1/chat/completions", json=CHAT | {"response_format": fmt}), 400
    )
    assert error["param"] == "response_format"


def test_a_grammar_llama_cpp_cannot_parse_is_a_400_at_admission(client):
    entry = contract_error(client.post("/execute", json=EXECUTE | {"grammar": "start ::= x"}), 400)
    assert entry["field"] == "grammar" and "root" in entry["message"]


# -- 2. values that used to be a 500 ----------------------------------------------------------


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_a_400_on_both_surfaces(client, constant):
    raw = f'{{"job_id": "n", "prompt": "Hi", "max_tokens": 4, "temperature": {constant}}}'
    assert (
        "JSON"
        in contract_error(client.post("/execute", content=raw, headers=JSON), 400)["constraint"]
    )
    raw = f'{{"prompt": "Hi", "temperature": {constant}}}'
    assert openai_error(client.post("/v1/completions", content=raw, headers=JSON), 400)


def test_lone_surrogates_are_a_400(client):
    escaped = '{"job_id": "s", "prompt": "\\ud800", "max_tokens": 4}'
    assert (
        "surrogate"
        in contract_error(client.post("/execute", content=escaped, headers=JSON), 400)["message"]
    )
    raw = b'{"prompt": "\xed\xa0\x80", "max_tokens": 4}'  # a surrogate in raw UTF-8 bytes
    assert openai_error(client.post("/v1/completions", content=raw, headers=JSON), 400)
    key = '{"messages": [{"role": "user", "content": "x"}], "\\udfff": 1}'
    assert openai_error(client.post("/v1/chat/completions", content=key, headers=JSON), 400)


@pytest.mark.parametrize("key", ["²", "1" * 5000, "-1", "0x10"])
def test_logit_bias_keys_that_are_not_token_ids_are_a_400(client, key):
    assert contract_error(client.post("/execute", json=EXECUTE | {"logit_bias": {key: 1}}), 400)
    assert openai_error(
        client.post("/v1/completions", json=COMPLETION | {"logit_bias": {key: 1}}), 400
    )


@pytest.mark.parametrize("value", ["NaN", "1e300", "-1e300"])
def test_logit_bias_values_are_range_checked_on_v1(client, value):
    raw = f'{{"prompt": "Hi", "logit_bias": {{"72": {value}}}}}'
    assert openai_error(client.post("/v1/completions", content=raw, headers=JSON), 400)


def test_json_nested_100000_deep_is_a_400(client):
    raw = '{"job_id": "d", "prompt": "Hi", "max_tokens": 4, "json_schema": ' + "[" * 100_000
    raw += "]" * 100_000 + "}"
    entry = contract_error(client.post("/execute", content=raw, headers=JSON), 400)
    assert "deep" in entry["message"]
    assert openai_error(client.post("/v1/completions", content="[" * 100_000, headers=JSON), 400)


# -- 3. sizes --------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_a_413_before_it_is_read(make):
    client = make(max_body_bytes=1 << 20)
    big = json.dumps(EXECUTE | {"prompt": "x" * (2 << 20)})
    entry = contract_error(client.post("/execute", content=big, headers=JSON), 413)
    assert entry["code"] == "PAYLOAD_TOO_LARGE" and str(1 << 20) in entry["message"]
    error = openai_error(client.post("/v1/completions", content=big, headers=JSON), 413)
    assert error["code"] == "payload_too_large"


def test_a_chunked_body_over_the_limit_is_a_413(make):
    client = make(max_body_bytes=1 << 20)

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    response = client.post("/v1/completions", content=chunks(), headers=JSON)
    assert openai_error(response, 413)["code"] == "payload_too_large"


def test_text_fields_have_limits_and_errors_quote_a_prefix(client):
    prompt = "y" * 300_000
    response = client.post("/v1/completions", json=COMPLETION | {"prompt": prompt})
    error = openai_error(response, 400)
    assert error["param"] == "prompt"
    assert len(response.content) < 2000  # the 300,000 characters are not echoed back
    messages = [{"role": "user", "content": "z" * 200_000}] * 2
    assert openai_error(client.post("/v1/chat/completions", json={"messages": messages}), 400)
    response = client.post("/execute", json=EXECUTE | {"prompt": "w" * 40_000})
    entry = contract_error(response, 400)
    assert entry["value"].endswith("(40000 characters)") and len(response.content) < 2000


# -- 4. cross-site requests -----------------------------------------------------------------


def test_non_json_content_types_are_a_415(client):
    body = json.dumps(EXECUTE)
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        response = client.post("/execute", content=body, headers={"content-type": kind})
        assert contract_error(response, 415)["code"] == "UNSUPPORTED_MEDIA_TYPE"
    response = client.post("/v1/chat/completions", content=json.dumps(CHAT))  # no type at all
    assert openai_error(response, 415)["param"] == "Content-Type"


def test_a_foreign_host_is_refused(client):
    for host in ("evil.example", "evil.example:8080", "attacker.localhost.evil"):
        response = client.get("/capacity", headers={"host": host})
        assert contract_error(response, 421)["code"] == "MISDIRECTED_REQUEST"
    for host in ("localhost:8080", "127.0.0.1", "[::1]:8080", "10.1.2.3:8080"):
        assert client.get("/capacity", headers={"host": host}).status_code == 200


def test_allowed_hosts_extend_the_list(make):
    client = make(allowed_hosts="worker.internal, gpu-7")
    assert client.get("/capacity", headers={"host": "worker.internal:8080"}).status_code == 200
    assert client.get("/capacity", headers={"host": "evil.example"}).status_code == 421


def test_state_changing_requests_from_other_origins_are_refused(make):
    plain = make()
    evil = {"origin": "http://evil.example"}
    assert contract_error(plain.post("/drain", headers=evil), 403)["code"] == "FORBIDDEN_ORIGIN"
    assert plain.get("/capacity").json()["state"] == "ready"  # the drain did not happen
    response = plain.post("/execute", json=EXECUTE, headers=evil)
    assert contract_error(response, 403)["field"] == "Origin"
    assert plain.delete("/jobs/x", headers=evil).status_code == 403
    # A page on an allowed origin may; reading is not refused by the origin check.
    allowed = make(cors_origins="http://app.example")
    assert (
        allowed.post("/execute", json=EXECUTE, headers={"origin": "http://app.example"}).status_code
        == 200
    )
    assert plain.get("/capacity", headers=evil).status_code == 200


# -- 5. the published OpenAPI document ------------------------------------------------------


def test_the_openapi_document_has_bodies_and_statuses(client):
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    for path, model in (
        ("/execute", "ExecuteRequest"),
        ("/tokenize", "TokenizeRequest"),
        ("/v1/completions", "CompletionRequest"),
        ("/v1/chat/completions", "ChatCompletionRequest"),
    ):
        operation = paths[path]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}
        assert model in document["components"]["schemas"]
        assert {"400", "401", "413", "415", "503"} <= set(operation["responses"])
    execute = paths["/execute"]["post"]["responses"]
    assert "text/event-stream" in execute["200"]["content"] and "409" in execute
    assert "429" in paths["/v1/chat/completions"]["post"]["responses"]
    error = paths["/v1/completions"]["post"]["responses"]["400"]["content"]["application/json"]
    assert error["schema"] == {"$ref": "#/components/schemas/OpenAIError"}
    assert "404" in paths["/jobs/{job_id}"]["delete"]["responses"]
    assert not any("422" in op["responses"] for ops in paths.values() for op in ops.values())


# -- 6. smaller ------------------------------------------------------------------------------


def test_health_without_the_token_says_only_status_and_state(make):
    client = make(api_token=TOKEN)
    assert client.get("/health").json() == {"status": "healthy", "state": "ready"}
    full = client.get("/health", headers={"authorization": f"Bearer {TOKEN}"}).json()
    assert full["model"]["path"] and full["devices"]
