"""Tool calling and thinking on /v1/chat/completions with a scripted backend: the template gets
the tools and the calls, the output is parsed into tool_calls and reasoning_content, streamed
as deltas, and bad tool requests are 400s naming the field."""

from __future__ import annotations

import json

import pytest
from chat_templates import CALL, HERMES_STYLE, THINKING
from fakes import FakeBackend
from openai_helpers import assert_error, chunks_of, client_for

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def served(script: str, template: str = HERMES_STYLE):
    backend = FakeBackend(n_ctx=2048, chat_template=template, script=script)
    client = client_for(backend)
    return backend, client


def chat(client, **body):
    return client.post("/v1/chat/completions", json={"messages": ASK, **body})


def prompt_text(backend: FakeBackend) -> str:
    return backend.detokenize(backend.requests[-1].prompt_tokens)


def test_a_call_is_parsed_into_tool_calls():
    backend, client = served("Let me check.\n" + CALL)
    with client:
        response = chat(client, tools=[WEATHER])
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Let me check."
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "unit": "C"}
    # The template saw the tools; auto watches for the call lazily.
    assert '"name": "get_weather"' in prompt_text(backend)
    sampling = backend.requests[-1].sampling
    assert sampling.grammar is not None and sampling.grammar_triggers


def test_streamed_calls_come_as_indexed_deltas_and_no_markup_in_content():
    _, client = served("Let me check.\n" + CALL)
    with client:
        chunks = chunks_of(chat(client, tools=[WEATHER], stream=True))
    assert chunks[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    content = "".join(d.get("content") or "" for d in deltas)
    assert content == "Let me check."
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    assert all("id" not in tc for tc in calls[1:]) and {tc["index"] for tc in calls} == {0}
    arguments = "".join(tc["function"]["arguments"] for tc in calls)
    assert json.loads(arguments) == {"city": "Paris", "unit": "C"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice_none_parses_nothing_and_forces_nothing():
    backend, client = served(CALL)
    with client:
        response = chat(client, tools=[WEATHER], tool_choice="none")
    message = response.json()["choices"][0]["message"]
    assert message["content"] == CALL and "tool_calls" not in message
    assert backend.requests[-1].sampling.grammar is None


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_calls_get_a_grammar_from_the_first_token(choice):
    backend, client = served(CALL)
    with client:
        response = chat(client, tools=[WEATHER], tool_choice=choice)
    assert response.json()["choices"][0]["finish_reason"] == "tool_calls"
    sampling = backend.requests[-1].sampling
    assert sampling.grammar is not None and "get-weather" in sampling.grammar
    assert sampling.grammar_triggers == ()


def test_a_tool_result_is_continued_with_the_call_in_the_prompt():
    backend, client = served("It is 21 C in Paris.")
    turns = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    ]
    with client:
        response = client.post("/v1/chat/completions", json={"messages": turns, "tools": [WEATHER]})
    assert response.json()["choices"][0]["message"]["content"] == "It is 21 C in Paris."
    prompt = prompt_text(backend)
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "<tool_response>\n21 C\n</tool_response>" in prompt


def test_thinking_is_kept_apart_and_streamed_apart():
    _, client = served("The user wants weather.\n</think>\n\nSunny.", THINKING)
    with client:
        message = chat(client).json()["choices"][0]["message"]
        chunks = chunks_of(chat(client, stream=True))
        kept = chat(client, reasoning_format="none").json()["choices"][0]["message"]
    assert message["reasoning_content"] == "The user wants weather."
    assert message["content"] == "Sunny."
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "The user wants weather."
    assert "".join(d.get("content") or "" for d in deltas) == "Sunny."
    assert "reasoning_content" not in kept and kept["content"].startswith("The user wants")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
                ]
            },
            "tools[0].function.parameters",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"type": "string", "maxLength": 100000}},
                            },
                        },
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_bad_tool_requests_are_400_naming_the_field(body, param):
    _, client = served("x")
    with client:
        assert_error(chat(client, **body), 400, param)


def test_a_tool_result_answering_no_call_is_a_400():
    _, client = served("x")
    turns = [*ASK, {"role": "tool", "tool_call_id": "call_nope", "content": "1"}]
    with client:
        response = client.post("/v1/chat/completions", json={"messages": turns})
    assert_error(response, 400, "messages[1].tool_call_id")


def test_arguments_that_are_not_a_json_object_are_a_400():
    _, client = served("x")
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
    turns = [*ASK, {"role": "assistant", "tool_calls": [call]}]
    with client:
        response = client.post("/v1/chat/completions", json={"messages": turns})
    assert_error(response, 400, "messages[1].tool_calls[0].function.arguments")
