"""What the published OpenAPI document says against what the worker does, rule by rule (the
fuzz test, test_fuzz.py, runs schemathesis' checks over every route): a 405 names the allowed
methods, each surface publishes its body and its error shape, two surfaces' models of one name
stay two, and the validation is as strict as the schema, nested objects included."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fakes import FakeBackend
from fastapi.testclient import TestClient

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
MESSAGE = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
EXECUTE = {"job_id": "j", "prompt": "Hi", "max_tokens": 2}


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def client(backend: FakeBackend, open_client) -> TestClient:
    return open_client(backend)


def document(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def test_every_405_names_the_methods_the_path_takes(client):
    # RFC 9110 §15.5.6: a 405 carries Allow. One path may be several routes (GET and DELETE
    # /v1/responses/{id}); Allow names them all, and no route's other paths.
    checked = 0
    for template, operations in document(client)["paths"].items():
        path = template.replace("{response_id}", "resp_0")
        path = re.sub(r"\{[a-z_]+\}", "x", path)
        documented = {method.upper() for method in operations}
        for method in set(METHODS) - documented:
            response = client.request(method, path)
            assert response.status_code == 405, (method, path, response.text)
            allowed = {m.strip() for m in response.headers["allow"].split(",")}
            # Starlette's own routes (the OpenAPI document, the docs) answer HEAD too.
            assert documented <= allowed <= documented | {"HEAD"}, (method, path, allowed)
            checked += 1
    assert checked > 50


def test_the_allow_header_is_in_every_surface_shape(client):
    contract = client.get("/execute")
    assert contract.headers["allow"] == "POST" and contract.json()["errors"][0]["code"]
    openai = client.put("/v1/chat/completions")
    assert openai.headers["allow"] == "POST" and openai.json()["error"]["type"]
    anthropic = client.get("/v1/messages")
    assert anthropic.headers["allow"] == "POST" and anthropic.json()["type"] == "error"
    # input_tokens is no response id: only its POST route takes the path.
    assert client.get("/v1/responses/input_tokens").headers["allow"] == "POST"


def test_the_new_surfaces_publish_their_bodies_and_error_shapes(client):
    paths = document(client)["paths"]
    for path, body, error in (
        ("/v1/messages", "MessagesRequest", "AnthropicError"),
        ("/v1/messages/count_tokens", "CountTokensRequest", "AnthropicError"),
        ("/v1/responses", "ResponsesRequest", "OpenAIError"),
        ("/v1/responses/input_tokens", "ResponsesRequest", "OpenAIError"),
    ):
        post = paths[path]["post"]
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{body}"}
        for status in ("400", "401", "413", "415"):
            content = post["responses"][status]["content"]["application/json"]
            assert content["schema"] == {"$ref": f"#/components/schemas/{error}"}, (path, status)


def test_two_surfaces_models_of_one_name_stay_two(client):
    schemas = document(client)["components"]["schemas"]

    def tool_of(request: str) -> dict[str, Any]:
        tools = schemas[request]["properties"]["tools"]["anyOf"][0]["items"]["$ref"]
        return schemas[tools.rsplit("/", 1)[1]]

    assert "function" in tool_of("ChatCompletionRequest")["properties"]
    assert "input_schema" in tool_of("MessagesRequest")["properties"]
    assert "parameters" in tool_of("ResponsesRequest")["properties"]


def test_the_schema_says_what_is_refused(client):
    schemas = document(client)["components"]["schemas"]
    # Stop sequences: 1..100 characters, at most 4.
    stop = schemas["ExecuteRequest"]["properties"]["stop"]
    assert stop["items"] == {"type": "string", "minLength": 1, "maxLength": 100}
    # Token ids are never negative; the vocabulary's bound is the model's, said in words.
    tokens = schemas["DetokenizeRequest"]["properties"]["tokens"]
    assert tokens["items"]["minimum"] == 0 and "vocabulary" in tokens["description"]
    # logit_bias: digits for keys, all other keys refused.
    bias = schemas["ExecuteRequest"]["properties"]["logit_bias"]["anyOf"][0]
    assert bias["propertyNames"] == {"pattern": "^[0-9]{1,10}$"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # Booleans of nested objects are booleans: 0, 1 and "yes" are not.
        (
            "/v1/chat/completions",
            CHAT | {"response_format": {"type": "json_schema", "json_schema": {"strict": "yes"}}},
        ),
        ("/v1/chat/completions", CHAT | {"response_format": {"type": "json_schema"}}),
        ("/v1/chat/completions", CHAT | {"stream_options": {"include_usage": 1}}),
        (
            "/v1/messages",
            MESSAGE | {"tool_choice": {"type": "auto", "disable_parallel_tool_use": 0}},
        ),
        ("/v1/messages", MESSAGE | {"thinking": {"type": "enabled"}}),
        ("/v1/responses", {"input": "Hi", "text": {"format": {"type": "text", "strict": 1}}}),
        ("/v1/responses", {}),
        # A number with a fraction is no integer.
        ("/execute", EXECUTE | {"max_tokens": 2.5}),
        ("/detokenize", {"tokens": [97.5]}),
    ],
)
def test_what_the_schema_refuses_is_refused(client, path, body):
    assert client.post(path, json=body).status_code == 400


def test_a_whole_number_written_with_a_fraction_is_an_integer(client):
    # JSON has one kind of number: 2.0 is the integer 2 to JSON Schema, and so it is here.
    assert client.post("/execute", json=EXECUTE | {"max_tokens": 2.0}).status_code == 200
    assert client.post("/detokenize", json={"tokens": [97.0, 98]}).json() == {"content": "ab"}


def test_a_logit_bias_of_0_is_no_ban(client, backend):
    body = EXECUTE | {"logit_bias": {"65": 0, "66": False}}
    assert client.post("/execute", json=body).status_code == 200
    assert backend.requests[0].sampling.logit_bias == ((65, 0.0), (66, float("-inf")))
