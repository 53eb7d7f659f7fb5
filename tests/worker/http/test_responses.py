"""The Responses API (/v1/responses) with a scripted backend: the response object and its events
as the `openai` SDK's models parse them, input items as the template sees them, function calls
and their outputs, reasoning, the store (previous_response_id, GET, DELETE, eviction), refusals
naming the field, input_tokens, and answers cut by max_output_tokens."""

from __future__ import annotations

import json

import pytest
from chat_templates import CALL, HERMES_STYLE, THINKING
from fakes import FakeBackend
from fastapi.testclient import TestClient
from openai.types.responses import Response, ResponseStreamEvent
from openai_helpers import assert_error, client_for
from pydantic import TypeAdapter

from llorch.worker.backend.errors import InferenceError
from llorch.worker.server import build_app
from llorch.worker.settings import WorkerSettings

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city"],
    },
}
EVENTS = TypeAdapter(ResponseStreamEvent)


def served(script: str = "Hello world", template: str = HERMES_STYLE, **settings):
    backend = FakeBackend(n_ctx=4096, chat_template=template, script=script)
    if not settings:
        return backend, client_for(backend)
    app = build_app(
        backend, WorkerSettings(worker_id="w-test", **settings), model_path=lambda: __file__
    )
    return backend, TestClient(app, base_url="http://127.0.0.1")


def create(client, **body):
    return client.post("/v1/responses", json={"input": "Weather in Paris?", **body})


def prompt_text(backend: FakeBackend) -> str:
    return backend.detokenize(backend.requests[-1].prompt_tokens)


def parsed(response) -> Response:
    """The response object, checked by the SDK's own model."""
    assert response.status_code == 200, response.text
    return Response.model_validate(response.json())


def events_of(response) -> list[dict]:
    """The SSE events, each `event: TYPE` and `data: JSON` naming the same type, and each
    parsed by the SDK's event union."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = response.text.split("\n\n")
    assert frames[-1] == ""
    out = []
    for frame in frames[:-1]:
        kind, data = frame.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        EVENTS.validate_python(event)
        out.append(event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def test_a_text_input_gets_a_completed_response_the_sdk_parses():
    backend, client = served("Sunny.")
    with client:
        response = parsed(create(client, instructions="Be brief.", temperature=0.5))
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.error is None
    assert response.model == "fake"
    assert response.output_text == "Sunny."
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    # The settings come back as they were asked.
    assert response.instructions == "Be brief." and response.temperature == 0.5
    assert response.tool_choice == "auto" and response.tools == []
    assert response.parallel_tool_calls is True and response.store is True
    usage = response.usage
    assert usage is not None and usage.output_tokens == len("Sunny.")
    assert usage.input_tokens == len(backend.requests[-1].prompt_tokens)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    # The instructions are a system turn before the input.
    assert prompt_text(backend).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>"
    )


def test_message_items_take_text_parts_and_roles():
    backend, client = served()
    items = [
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Bonjour"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
    ]
    with client:
        parsed(create(client, input=items))
    assert prompt_text(backend) == (
        "<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nBonjour<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_the_stream_is_openais_events_in_order_with_sequence_numbers():
    _, client = served("Sunny today.")
    with client:
        whole = create(client).json()
        events = events_of(create(client, stream=True))
        kept = client.get(f"/v1/responses/{events[-1]['response']['id']}").json()
    kinds = [e["type"] for e in events]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert (
        events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    )
    added = events[2]["item"]
    assert added["type"] == "message" and added["content"] == []
    assert events[3]["part"] == {
        "type": "output_text",
        "text": "",
        "annotations": [],
        "logprobs": [],
    }
    assert all(
        (d["item_id"], d["output_index"], d["content_index"]) == (added["id"], 0, 0) for d in deltas
    )
    assert "".join(d["delta"] for d in deltas) == "Sunny today." == events[-4]["text"]
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"] == [events[-2]["item"]]
    assert final["output"][0]["content"][0]["text"] == whole["output"][0]["content"][0]["text"]
    assert final["usage"]["output_tokens"] == whole["usage"]["output_tokens"]
    assert kept == final  # a streamed response is stored too


def test_a_call_is_a_function_call_item_whole_and_streamed():
    backend, client = served("Let me check.\n" + CALL)
    with client:
        response = parsed(create(client, tools=[WEATHER]))
        events = events_of(create(client, tools=[WEATHER], stream=True))
    message, call = response.output
    assert message.type == "message" and message.content[0].text == "Let me check."
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert call.status == "completed"
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "C"}
    assert response.tools[0].name == "get_weather"
    assert '"name": "get_weather"' in prompt_text(backend)
    # Streamed: the call is added with empty arguments, which grow by deltas.
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [a["item"]["type"] for a in added] == ["message", "function_call"]
    assert added[1]["output_index"] == 1 and added[1]["item"]["arguments"] == ""
    arguments = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert all(a["item_id"] == added[1]["item"]["id"] for a in arguments)
    (done,) = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done["name"] == "get_weather"
    assert "".join(a["delta"] for a in arguments) == done["arguments"]
    assert json.loads(done["arguments"]) == {"city": "Paris", "unit": "C"}
    # The message is done before the call is added.
    kinds = [e["type"] for e in events]
    assert kinds.index("response.output_item.done") < kinds.index(
        "response.function_call_arguments.delta"
    )


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_weather"}])
def test_forced_calls_get_a_grammar_from_the_first_token(choice):
    backend, client = served(CALL)
    with client:
        response = parsed(create(client, tools=[WEATHER], tool_choice=choice))
    assert [item.type for item in response.output] == ["function_call"]
    sampling = backend.requests[-1].sampling
    assert sampling.grammar is not None and "get-weather" in sampling.grammar
    assert sampling.grammar_triggers == ()
    echoed = response.tool_choice
    assert echoed == "required" if choice == "required" else echoed.name == "get_weather"


def test_function_call_outputs_are_continued_with_the_calls_in_the_prompt():
    backend, client = served("It is 21 C in Paris, 12 C in Oslo.")
    items = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {
            "type": "function_call",
            "call_id": "call_2",
            "name": "get_weather",
            "arguments": '{"city": "Oslo"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "21 C"},
        {"type": "function_call_output", "call_id": "call_2", "output": "12 C"},
    ]
    with client:
        response = parsed(create(client, input=items, tools=[WEATHER]))
    assert response.output_text == "It is 21 C in Paris, 12 C in Oslo."
    prompt = prompt_text(backend)
    # The two calls are one assistant turn, each result a tool turn.
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": '
        '"Paris"}}\n</tool_call><tool_call>\n{"name": "get_weather", "arguments": {"city": '
        '"Oslo"}}\n</tool_call><|im_end|>'
    ) in prompt
    assert "<tool_response>\n21 C\n</tool_response>" in prompt
    assert "<tool_response>\n12 C\n</tool_response>" in prompt


def test_reasoning_is_an_item_and_a_reasoning_item_is_given_back_to_its_turn():
    backend, client = served("The user wants weather.\n</think>\n\nSunny.", THINKING)
    with client:
        response = parsed(create(client))
        events = events_of(create(client, stream=True))
        items = [
            {"role": "user", "content": "Weather?"},
            *[item.model_dump(exclude_none=True) for item in response.output],
            {"role": "user", "content": "And tomorrow?"},
        ]
        parsed(create(client, input=items))
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert reasoning.summary == [] and reasoning.content is not None
    assert reasoning.content[0].text == "The user wants weather."
    assert message.type == "message" and response.output_text == "Sunny."
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens > 0
    kinds = [e["type"] for e in events]
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    thought = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert thought == "The user wants weather."
    (part,) = [e["part"] for e in events if e["type"] == "response.content_part.added"][:1]
    assert part == {"type": "reasoning_text", "text": ""}
    # Sent back, the reasoning item and the message are one assistant turn with its thinking.
    assert (
        "<|im_start|>assistant\n<think>The user wants weather.</think>Sunny.<|im_end|>"
        in prompt_text(backend)
    )


def test_a_stored_response_is_continued_got_and_deleted():
    backend, client = served("Sunny.")
    with client:
        first = parsed(create(client, instructions="Be brief."))
        second = parsed(
            create(
                client, input="And tomorrow?", previous_response_id=first.id, max_output_tokens=64
            )
        )
        prompt = prompt_text(backend)
        got = client.get(f"/v1/responses/{first.id}")
        deleted = client.delete(f"/v1/responses/{first.id}")
        gone = client.get(f"/v1/responses/{first.id}")
        continued = create(client, previous_response_id=first.id)
        again = client.delete(f"/v1/responses/{first.id}")
    assert second.previous_response_id == first.id and second.max_output_tokens == 64
    # The earlier input and output come before the new input; its instructions do not.
    assert prompt == (
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\nSunny.<|im_end|>\n"
        "<|im_start|>user\nAnd tomorrow?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert got.status_code == 200 and got.json()["id"] == first.id
    assert Response.model_validate(got.json()).output_text == "Sunny."
    assert deleted.json() == {"id": first.id, "object": "response.deleted", "deleted": True}
    assert_error(gone, 404)
    error = assert_error(continued, 404, "previous_response_id")
    assert first.id in error["message"]
    assert_error(again, 404)


def test_store_false_keeps_nothing():
    _, client = served()
    with client:
        response = parsed(create(client, store=False))
        assert response.store is False
        assert_error(client.get(f"/v1/responses/{response.id}"), 404)
        assert_error(create(client, previous_response_id=response.id), 404, "previous_response_id")


def test_the_store_forgets_the_least_recently_used_response():
    _, client = served(responses_store=2)
    with client:
        ids = [parsed(create(client)).id for _ in range(2)]
        assert client.get(f"/v1/responses/{ids[0]}").status_code == 200  # now the most recent
        ids.append(parsed(create(client)).id)
        states = [client.get(f"/v1/responses/{i}").status_code for i in ids]
    assert states == [200, 404, 200]


@pytest.mark.parametrize(
    "kind",
    [
        "web_search",
        "web_search_preview",
        "file_search",
        "computer_use_preview",
        "code_interpreter",
        "image_generation",
        "local_shell",
        "mcp",
    ],
)
def test_built_in_tools_are_refused_naming_them(kind):
    _, client = served()
    with client:
        error = assert_error(create(client, tools=[WEATHER, {"type": kind}]), 400, "tools[1].type")
    assert kind in error["message"]


AUDIO_PART = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].image_url",
            "--mmproj",  # a model without a projector takes no images
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
            "file_id is not served",
        ),
        (
            {"input": [{"role": "user", "content": [AUDIO_PART]}]},
            "input[0].content[0].input_audio.data",
            "takes no audio",  # nor audio
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "input[0].content[0].input_audio",
            "needs its input_audio",
        ),
        (
            {"input": [{"role": "user", "content": "x"}, {"type": "web_search_call", "id": "w"}]},
            "input[1].type",
            "web_search_call",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]},
            "input[0].call_id",
            "call_x",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]},
            "input[0].arguments",
            "JSON object",
        ),
        (
            {"tools": [{"type": "function", "name": "f", "parameters": {"type": "array"}}]},
            "tools[0].parameters",
            "object",
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "x"}},
            "tool_choice",
            "x",
        ),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice.type", "web_search"),
        (
            {"tools": [WEATHER], "text": {"format": {"type": "json_object"}}},
            "text.format",
            "JSON",
        ),
        ({"input": None}, "input", "required"),
        ({"previous_response_id": "resp_nope"}, "previous_response_id", "resp_nope"),
    ],
)
def test_refusals_name_the_responses_field(body, param, words):
    _, client = served()
    with client:
        response = create(client, **body)
    error = assert_error(response, 404 if param == "previous_response_id" else 400, param)
    assert words in error["message"]


def test_text_format_json_schema_constrains_the_answer():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    backend, client = served('{"city": "Paris"}')
    fmt = {"type": "json_schema", "name": "place", "schema": schema, "strict": True}
    with client:
        response = parsed(create(client, text={"format": fmt}))
    assert json.loads(response.output_text) == {"city": "Paris"}
    assert backend.requests[-1].sampling.grammar is not None
    assert response.text is not None and response.text.format.type == "json_schema"


def test_input_tokens_counts_the_prompt_as_a_response_would_read_it():
    backend, client = served()
    with client:
        counted = client.post(
            "/v1/responses/input_tokens",
            json={"input": "Weather in Paris?", "tools": [WEATHER], "instructions": "Be brief."},
        )
        response = parsed(create(client, tools=[WEATHER], instructions="Be brief."))
    assert counted.status_code == 200, counted.text
    assert counted.json() == {
        "object": "response.input_tokens",
        "input_tokens": response.usage.input_tokens,
    }
    assert len(backend.requests) == 1  # counting generated nothing


def test_an_answer_cut_by_max_output_tokens_is_incomplete():
    _, client = served("Sunny all week long.")
    with client:
        response = parsed(create(client, max_output_tokens=5))
        events = events_of(create(client, max_output_tokens=5, stream=True))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Sunny" and response.output[0].status == "incomplete"
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_failure_mid_stream_is_a_failed_response():
    backend = FakeBackend(
        n_ctx=4096,
        chat_template=HERMES_STYLE,
        script="Sunny",
        fail=InferenceError("boom"),
        fail_at=3,
    )
    client = client_for(backend)
    with client:
        events = events_of(create(client, stream=True))
        whole = create(client)
    last = events[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"]["message"] == "boom"
    assert last["response"]["output"][0]["content"][0]["text"] == "Sun"
    assert whole.status_code == 500 and whole.json()["error"]["message"] == "boom"


def test_responses_route_unknown_models_to_the_served_one_and_reject_bad_json():
    _, client = served()
    with client:
        assert parsed(create(client, model="gpt-5")).model == "fake"
        assert_error(
            client.post(
                "/v1/responses", content=b"{", headers={"content-type": "application/json"}
            ),
            400,
        )
        assert_error(create(client, temperature="hot"), 400, "temperature")
