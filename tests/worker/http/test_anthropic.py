"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) with a scripted backend:
the message's shape, the stream's event order, tool_use parsed from a Hermes-style template's
output and tool_result continued, thinking kept apart, every error in Anthropic's shape with
its status, and x-api-key authentication."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chat_templates import CALL, HERMES_STYLE, THINKING
from fakes import FakeBackend
from fastapi.testclient import TestClient
from support import model_loaded

from llorch.worker.backend.errors import (
    DeadlineExceededError,
    DrainingError,
    InferenceError,
    InvalidRequestError,
    NotReadyError,
    QueueFullError,
    ShuttingDownError,
)
from llorch.worker.chat.types import ReasoningFormat, ToolChoiceMode
from llorch.worker.http import anthropic
from llorch.worker.http.anthropic_request import chat_request
from llorch.worker.http.anthropic_schemas import CountTokensRequest, MessagesRequest
from llorch.worker.http.errors import anthropic_body
from llorch.worker.server import build_app
from llorch.worker.settings import WorkerSettings

# What Anthropic's SDKs send with every request; accepted and ignored.
HEADERS = {"anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024-04-04"}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city"],
    },
}
TOKEN = "s3cret-token"


def client_for(backend: FakeBackend, **settings: Any) -> TestClient:
    app = build_app(
        backend, WorkerSettings(worker_id="w-test", **settings), model_path=lambda: __file__
    )
    return TestClient(app, base_url="http://127.0.0.1")


def served(script: str = "Hello world", template: str | None = HERMES_STYLE, **kwargs: Any):
    backend = FakeBackend(n_ctx=2048, chat_template=template, script=script, **kwargs)
    return backend, client_for(backend)


def post(client: TestClient, path: str = "/v1/messages", **body: Any):
    body = {"model": "claude-sonnet-4-5", "max_tokens": 256, "messages": ASK} | body
    return client.post(path, json=body, headers=HEADERS)


def events_of(response) -> list[tuple[str, dict]]:
    """(event name, data) of each SSE frame; every frame names its event, as the SDK needs."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = response.text.split("\n\n")
    assert frames[-1] == ""
    out = []
    for f in frames[:-1]:
        name, data = f.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data.removeprefix("data: "))
        assert payload["type"] == name.removeprefix("event: ")
        out.append((name.removeprefix("event: "), payload))
    return out


def assert_error(response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind and body["error"]["message"]
    return body["error"]["message"]


def prompt_text(backend: FakeBackend) -> str:
    return backend.detokenize(backend.requests[-1].prompt_tokens)


# -- messages ---------------------------------------------------------------------------------


def test_a_message_has_anthropics_shape():
    _, client = served("Sunny.", template=None)
    with client:
        response = post(client)
    body = response.json()
    assert response.status_code == 200, body
    assert body["id"].startswith("msg_") and body["type"] == "message"
    assert body["role"] == "assistant" and body["model"] == "fake"
    assert body["content"] == [{"type": "text", "text": "Sunny."}]
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    usage = body["usage"]
    assert usage["output_tokens"] == len("Sunny.")
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] > len("Weather in Paris?")


def test_system_text_and_blocks_reach_the_prompt_in_order():
    backend, client = served(template=None)
    system = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}]
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"}],
        },
        {"role": "assistant", "content": "Yes?"},
        {"role": "user", "content": "Three"},
        {"role": "user", "content": "Four"},  # consecutive turns of a role are one, as Anthropic's
    ]
    with client:
        assert post(client, system=system, messages=messages).status_code == 200
        assert post(client, system="Alone.").status_code == 200
    prompt = backend.detokenize(backend.requests[0].prompt_tokens)
    assert prompt == (
        "<system>Be brief.\n\nBe kind.</system><user>One\n\nTwo</user>"
        "<assistant>Yes?</assistant><user>Three\n\nFour</user><assistant>"
    )
    assert prompt_text(backend).startswith("<system>Alone.</system>")


def test_sampling_stop_sequences_and_max_tokens():
    backend, client = served("Hello world", template=None)
    with client:
        stopped = post(client, stop_sequences=["wor"], temperature=0.2, top_p=0.9, top_k=5).json()
        cut = post(client, max_tokens=3).json()
    assert stopped["content"] == [{"type": "text", "text": "Hello "}]
    assert stopped["stop_reason"] == "stop_sequence" and stopped["stop_sequence"] == "wor"
    sampling = backend.requests[0].sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == (0.2, 0.9, 5)
    assert cut["stop_reason"] == "max_tokens" and cut["usage"]["output_tokens"] == 3


def test_the_stream_follows_anthropics_event_order():
    _, client = served("Hi there", template=None)
    with client:
        whole = post(client).json()
        events = events_of(post(client, stream=True))
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["model"] == "fake"
    assert start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"text_delta"}
    assert "".join(d["text"] for d in deltas) == "Hi there"
    closing = events[-2][1]
    assert closing["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert closing["usage"]["output_tokens"] == whole["usage"]["output_tokens"]


def test_pings_are_sent_while_nothing_comes(monkeypatch):
    monkeypatch.setattr(anthropic, "PING_INTERVAL_S", 0.005)
    _, client = served("Hi", template=None, delay=0.1)
    with client:
        names = [name for name, _ in events_of(post(client, stream=True))]
    assert names.count("ping") >= 3 and names[-1] == "message_stop"


# -- tools ------------------------------------------------------------------------------------


def test_a_call_is_a_tool_use_block():
    backend, client = served("Let me check.\n" + CALL)
    with client:
        body = post(client, tools=[WEATHER]).json()
    assert body["stop_reason"] == "tool_use"
    text, call = body["content"]
    assert text == {"type": "text", "text": "Let me check."}
    assert call["type"] == "tool_use" and call["id"].startswith("toolu_")
    assert call["name"] == "get_weather" and call["input"] == {"city": "Paris", "unit": "C"}
    assert '"name": "get_weather"' in prompt_text(backend)  # the template saw the tools
    assert backend.requests[-1].sampling.grammar_triggers  # auto: watched for lazily


def test_a_streamed_call_is_a_block_of_input_json_deltas():
    _, client = served("Let me check.\n" + CALL)
    with client:
        events = events_of(post(client, tools=[WEATHER], stream=True))
    starts = [data for name, data in events if name == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1]
    assert starts[0]["content_block"] == {"type": "text", "text": ""}
    block = starts[1]["content_block"]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_") and block["input"] == {}
    stops = [data["index"] for name, data in events if name == "content_block_stop"]
    assert stops == [0, 1]
    deltas = [data for name, data in events if name == "content_block_delta"]
    text = "".join(d["delta"]["text"] for d in deltas if d["index"] == 0)
    partial = "".join(d["delta"]["partial_json"] for d in deltas if d["index"] == 1)
    assert text == "Let me check." and json.loads(partial) == {"city": "Paris", "unit": "C"}
    assert {d["delta"]["type"] for d in deltas if d["index"] == 1} == {"input_json_delta"}
    # Each block opens after the one before it closed.
    names = [(name, data.get("index")) for name, data in events]
    assert names.index(("content_block_stop", 0)) < names.index(("content_block_start", 1))
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("choice", "mode", "name", "parallel"),
    [
        ({"type": "auto"}, ToolChoiceMode.AUTO, None, True),
        ({"type": "any"}, ToolChoiceMode.REQUIRED, None, True),
        ({"type": "tool", "name": "get_weather"}, ToolChoiceMode.NAMED, "get_weather", True),
        ({"type": "none"}, ToolChoiceMode.NONE, None, True),
        ({"type": "any", "disable_parallel_tool_use": True}, ToolChoiceMode.REQUIRED, None, False),
    ],
)
def test_tool_choice_translates(choice, mode, name, parallel):
    body = MessagesRequest.model_validate(
        {"max_tokens": 5, "messages": ASK, "tools": [WEATHER], "tool_choice": choice}
    )
    request = chat_request(body, "msg_1")
    assert (request.tool_choice.mode, request.tool_choice.name) == (mode, name)
    assert request.parallel_tool_calls is parallel
    assert request.tools[0].parameters == WEATHER["input_schema"]


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}])
def test_forced_tool_use_gets_a_grammar_from_the_first_token(choice):
    backend, client = served(CALL)
    with client:
        body = post(client, tools=[WEATHER], tool_choice=choice).json()
    assert body["stop_reason"] == "tool_use" and body["content"][0]["type"] == "tool_use"
    sampling = backend.requests[-1].sampling
    assert sampling.grammar is not None and "get-weather" in sampling.grammar
    assert sampling.grammar_triggers == ()


def test_a_call_cut_by_max_tokens_is_left_out_of_the_message():
    """The core keeps the calls an answer completed before its token limit and gives up the
    one it was cut inside (as /v1/chat/completions does): the message has no block for it."""
    _, client = served(CALL + CALL)
    cut = {"tools": [WEATHER], "tool_choice": {"type": "any"}, "max_tokens": 140}
    with client:
        body = post(client, **cut).json()
        events = events_of(post(client, **cut, stream=True))
    assert body["stop_reason"] == "max_tokens"
    [call] = body["content"]
    assert call["type"] == "tool_use" and call["input"] == {"city": "Paris", "unit": "C"}
    # Streamed, the cut call's block went out before the cut.
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["tool_use", "tool_use"]
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_tool_choice_none_parses_nothing():
    backend, client = served(CALL)
    with client:
        body = post(client, tools=[WEATHER], tool_choice={"type": "none"}).json()
    assert body["content"] == [{"type": "text", "text": CALL}] and body["stop_reason"] == "end_turn"
    assert backend.requests[-1].sampling.grammar is None


def continued(is_error: bool = False) -> list[dict]:
    result = {"type": "tool_result", "tool_use_id": "toolu_01abc", "content": "21 C"}
    return [
        *ASK,
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_01abc",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {"role": "user", "content": [result | {"is_error": is_error}]},
    ]


def test_a_tool_result_is_continued_with_the_call_in_the_prompt():
    backend, client = served("It is 21 C in Paris.")
    with client:
        body = post(client, tools=[WEATHER], messages=continued()).json()
        failed = post(client, tools=[WEATHER], messages=continued(is_error=True))
    assert body["content"] == [{"type": "text", "text": "It is 21 C in Paris."}]
    prompt = backend.detokenize(backend.requests[0].prompt_tokens)
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "<tool_response>\n21 C\n</tool_response>" in prompt
    assert failed.status_code == 200
    assert "<tool_response>\nError: 21 C\n</tool_response>" in prompt_text(backend)


def test_tool_results_become_tool_turns_in_order_then_the_text():
    history = continued()
    history[1]["content"].append(
        {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Rome"}}
    )
    history[2]["content"] += [
        {
            "type": "tool_result",
            "tool_use_id": "toolu_02",
            "content": [{"type": "text", "text": "30 C"}],
        },
        {"type": "text", "text": "Which is warmer?"},
    ]
    request = chat_request(
        MessagesRequest.model_validate({"max_tokens": 5, "messages": history}), "m"
    )
    turns = [(m.role, m.content, m.tool_call_id) for m in request.messages]
    assert turns[2:] == [
        ("tool", "21 C", "01abc"),
        ("tool", "30 C", "02"),
        ("user", "Which is warmer?", None),
    ]
    assert [c.id for c in request.messages[1].tool_calls] == ["01abc", "02"]
    assert json.loads(request.messages[1].tool_calls[1].arguments) == {"city": "Rome"}


# -- thinking ---------------------------------------------------------------------------------

THOUGHT = "The user wants weather.\n</think>\n\nSunny."


def test_thinking_is_a_block_before_the_text():
    _, client = served(THOUGHT, THINKING)
    with client:
        body = post(client).json()
        events = events_of(post(client, stream=True))
    assert body["content"] == [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": ""},
        {"type": "text", "text": "Sunny."},
    ]
    starts = [
        data["content_block"]["type"] for name, data in events if name == "content_block_start"
    ]
    assert starts == ["thinking", "text"]
    deltas = [data for name, data in events if name == "content_block_delta"]
    assert (
        "".join(d["delta"]["thinking"] for d in deltas if d["index"] == 0)
        == "The user wants weather."
    )
    assert {d["delta"]["type"] for d in deltas if d["index"] == 0} == {"thinking_delta"}
    assert "".join(d["delta"]["text"] for d in deltas if d["index"] == 1) == "Sunny."


def test_thinking_options_set_the_budget():
    backend, client = served(THOUGHT, THINKING)
    with client:
        post(client, thinking={"type": "enabled", "budget_tokens": 7})
        enabled = backend.requests[-1].reasoning_budget
        post(client, thinking={"type": "disabled"})
        disabled = backend.requests[-1].reasoning_budget
        post(client)
        default = backend.requests[-1].reasoning_budget
    assert enabled is not None and enabled.tokens == 7
    assert disabled is not None and disabled.tokens == 0
    assert default is None  # the server's default: unbounded


def test_earlier_thinking_is_the_assistants_reasoning_and_redacted_thinking_is_dropped():
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": [
                {"type": "redacted_thinking", "data": "b64"},
                {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
                {"type": "text", "text": "Sunny."},
            ],
        },
        {"role": "user", "content": "Thanks"},
    ]
    body = {
        "max_tokens": 5,
        "messages": history,
        "thinking": {"type": "enabled", "budget_tokens": 9},
    }
    request = chat_request(MessagesRequest.model_validate(body), "m")
    assistant = request.messages[1]
    assert (assistant.content, assistant.reasoning) == ("Sunny.", "Hmm.")
    assert request.reasoning.budget == 9 and request.reasoning.format is ReasoningFormat.AUTO


# -- count_tokens -----------------------------------------------------------------------------


def test_count_tokens_is_the_prompt_of_the_message():
    _, client = served(template=None)
    with client:
        counted = post(client, "/v1/messages/count_tokens", max_tokens=None)
        answered = post(client).json()["usage"]
        bare = {"model": "m", "messages": ASK}  # no max_tokens: count_tokens' body
        alone = client.post("/v1/messages/count_tokens", json=bare, headers=HEADERS)
    assert counted.status_code == 200 and counted.json() == alone.json()
    assert counted.json() == {
        "input_tokens": answered["input_tokens"] + answered["cache_read_input_tokens"]
    }


def test_count_tokens_counts_the_tools():
    _, client = served()
    with client:
        bare = post(client, "/v1/messages/count_tokens").json()["input_tokens"]
        tooled = post(client, "/v1/messages/count_tokens", tools=[WEATHER]).json()["input_tokens"]
        refused = post(client, "/v1/messages/count_tokens", messages=[])
    assert tooled > bare + len("get_weather")
    assert_error(refused, 400, "invalid_request_error")
    assert CountTokensRequest.model_validate({"messages": ASK}).tools is None


# -- errors -----------------------------------------------------------------------------------


# An image to a model served without a projector: refused, naming the block.
IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (
            {"messages": [{"role": "user", "content": [IMAGE]}]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    *continued()[:2],
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "toolu_01abc",
                                "content": [IMAGE],
                            }
                        ],
                    },
                ]
            },
            "messages[2].content[0].content[0]",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search_20250305"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "bash_20250124"),
        (
            {"tools": [{"type": "text_editor_20250124", "name": "str_replace_editor"}]},
            "text_editor",
        ),
        ({"tools": [{"name": "f", "input_schema": {"type": "array"}}]}, "tools.0"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].name"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "other"}}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool"}}, "tool_choice"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"messages": continued()[:1] + continued()[2:]}, "messages[1].content[0].tool_use_id"),
        ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "messages.0.content"),
        ({"messages": [*ASK, {"role": "assistant", "content": "The"}]}, "prefill"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "x"}]}
                ]
            },
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"thinking": {"type": "enabled"}}, "budget_tokens"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ],
)
def test_bad_requests_are_invalid_request_errors_naming_the_field(body, named):
    _, client = served()
    with client:
        message = assert_error(post(client, **body), 400, "invalid_request_error")
    assert named in message


def test_a_prompt_past_the_context_is_a_400_naming_the_messages():
    _, client = served()
    with client:
        message = assert_error(post(client, max_tokens=4000), 400, "invalid_request_error")
    assert "max_tokens" in message
    with client:
        long = [{"role": "user", "content": "x" * 3000}]
        assert "messages" in assert_error(post(client, messages=long), 400, "invalid_request_error")


def test_malformed_json_and_wrong_media_type():
    _, client = served()
    with client:
        raw = client.post(
            "/v1/messages", content=b"{", headers={"content-type": "application/json"}
        )
        text = client.post("/v1/messages", content=b"{}", headers={"content-type": "text/plain"})
    assert "malformed JSON" in assert_error(raw, 400, "invalid_request_error")
    assert assert_error(text, 415, "invalid_request_error")


def test_too_large_foreign_origin_unknown_path_and_wrong_method():
    backend = FakeBackend(n_ctx=2048)
    with client_for(backend, max_body_bytes=1024) as client:
        big = post(client, messages=[{"role": "user", "content": "x" * 2000}])
        origin = client.post(
            "/v1/messages",
            json={"max_tokens": 5, "messages": ASK},
            headers={"origin": "https://evil.example"},
        )
        unknown = client.post("/v1/messages/batches", json={})
        method = client.get("/v1/messages/count_tokens")
    assert_error(big, 413, "request_too_large")
    assert_error(origin, 403, "permission_error")
    assert_error(unknown, 404, "not_found_error")
    assert_error(method, 405, "invalid_request_error")


def test_a_full_queue_is_a_rate_limit_error_with_retry_after(monkeypatch):
    _, client = served()
    with client:

        def full(*args: Any, **kwargs: Any) -> None:
            raise QueueFullError(64, 64)

        monkeypatch.setattr(client.app.state.fleet.default.scheduler, "submit", full)
        response = post(client)
        metrics = client.get("/metrics").text
    assert_error(response, 429, "rate_limit_error")
    assert response.headers["retry-after"] == "1"
    assert 'llorch_requests_total{outcome="rejected",reason="429"} 1.0' in metrics


def test_a_draining_worker_is_overloaded_and_still_counts():
    _, client = served()
    with client:
        assert client.post("/drain").status_code == 202
        assert "draining" in assert_error(post(client), 529, "overloaded_error")
        counted = post(client, "/v1/messages/count_tokens")  # no generation: still answered
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0


def test_a_failure_is_an_api_error_whole_and_an_error_event_streamed():
    _, client = served(fail=RuntimeError("the device fell over"), fail_at=2)
    with client:
        assert model_loaded(client)
        whole = post(client)
        events = events_of(post(client, stream=True))
    assert "fell over" in assert_error(whole, 500, "api_error")
    name, error = events[-1]
    assert name == "error" and error["error"]["type"] == "api_error"
    assert "message_stop" not in [n for n, _ in events]
    text = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
    assert "".join(text) == "He"


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequestError("bad", param="x"), 400, "invalid_request_error"),
        (QueueFullError(1, 1), 429, "rate_limit_error"),
        (DrainingError("draining"), 529, "overloaded_error"),
        (ShuttingDownError("stopping"), 529, "overloaded_error"),
        (NotReadyError("loading"), 529, "overloaded_error"),
        (DeadlineExceededError("late"), 504, "timeout_error"),
        (InferenceError("boom"), 500, "api_error"),
        (ValueError("a bug"), 500, "api_error"),
    ],
)
def test_each_error_has_anthropics_status_and_type(error, status, kind):
    got_status, body = anthropic_body(error)
    assert got_status == status and body["type"] == "error" and body["error"]["type"] == kind
    if isinstance(error, InvalidRequestError):
        assert body["error"]["message"] == "x: bad"  # the field leads: the shape has no param


# -- authentication ---------------------------------------------------------------------------


def test_x_api_key_and_bearer_both_authenticate():
    backend = FakeBackend(n_ctx=2048)
    with client_for(backend, api_token=TOKEN) as client:
        missing = post(client)
        wrong = client.post(
            "/v1/messages",
            json={"max_tokens": 5, "messages": ASK},
            headers=HEADERS | {"x-api-key": "nope"},
        )
        keyed = client.post(
            "/v1/messages",
            json={"max_tokens": 5, "messages": ASK},
            headers=HEADERS | {"x-api-key": TOKEN},
        )
        bearer = client.post(
            "/v1/messages/count_tokens",
            json={"messages": ASK},
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        elsewhere = client.get("/v1/models", headers={"x-api-key": TOKEN})
    assert "missing" in assert_error(missing, 401, "authentication_error")
    assert "invalid x-api-key" in assert_error(wrong, 401, "authentication_error")
    assert keyed.status_code == 200 and bearer.status_code == 200, keyed.text + bearer.text
    assert elsewhere.status_code == 200  # every route takes the key
