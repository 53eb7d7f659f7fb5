"""End to end: the official `anthropic` SDK, unmodified, against `llorch serve` with the real
SmolLM2-135M-Instruct: text whole and streamed, forced tool use and its result continued,
thinking with a budget (SmolLM2 under the Qwen3.5 template, which opens a thinking block),
count_tokens, and errors raised as the SDK's own exceptions.

A 135M model knows no tool syntax and does not think: what is checked is what the worker
guarantees whatever the model (a forced call parses and validates, thinking is a block of its
own bounded by its budget, every answer has Anthropic's shape)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import THREADS, WorkerProcess, start_worker

from llorch.worker import models

anthropic = pytest.importorskip("anthropic")

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
KEY = "e2e-key"
# Any name: in the default set-up a chat naming a model that is not served goes to the chat
# model, and Anthropic's clients always name one.
MODEL = "claude-sonnet-4-5"
CITIES = ["Paris", "London", "Tokyo"]
WEATHER = {
    "name": "get_weather",
    "description": "The weather forecast of a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "enum": CITIES},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "days"],
    },
}
TIME = {
    "name": "get_time",
    "description": "The local time of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": CITIES}},
        "required": ["city"],
    },
}
ASK = [{"role": "user", "content": "What will the weather be in Paris for the next 2 days?"}]
# Greedy, SmolLM2-135M-Instruct answers this with a sentence naming Paris (see
# tests/worker/test_default_chat_model.py for why this wording).
# The SDK's create() has no sampling arguments (Anthropic's newer models take none); the
# body takes temperature (as the API documented it), so it goes as an extra field.
GREEDY = {"temperature": 0}
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def qwen35_template() -> Path:
    """Qwen3.5-4B's template from the llama-cpp-python sdist's models/templates (fetched once,
    as tests/worker/chat/conftest.py does)."""
    spec = importlib.util.spec_from_file_location("llorch_build_backend", REPO / "build/backend.py")
    assert spec is not None and spec.loader is not None
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    source = Path(backend.sdist_source(sys.executable))
    return source / "vendor/llama.cpp/models/templates/Qwen3.5-4B.jinja"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """The default set-up (Gemma 3 270M, and SmolLM2 for chats), behind a token."""
    models.chat_model_path()  # fetched once, before the worker needs it
    worker = start_worker(tmp_path_factory.mktemp("anthropic"), "--api-token", KEY)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """SmolLM2 under the Qwen3.5 template: every answer opens with a thinking block."""
    gguf = models.chat_model_path()
    worker = start_worker(
        tmp_path_factory.mktemp("thinker"),
        *("--model", f"qwen35={gguf}", "--chat-template-file", f"qwen35={qwen35_template()}"),
        *("--ctx-size", "2048", "--parallel", "1", "--threads", str(THREADS)),
    )
    yield worker
    worker.stop()


def client_of(worker: WorkerProcess, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=worker.url, api_key=key, timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def client(served: WorkerProcess) -> anthropic.Anthropic:
    return client_of(served)


def test_a_message_in_words(client):
    message = client.messages.create(model=MODEL, max_tokens=30, extra_body=GREEDY, messages=FRANCE)
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == models.CHAT_MODEL_NAME
    [block] = message.content
    assert block.type == "text" and "Paris" in block.text, block.text
    assert message.stop_reason in ("end_turn", "max_tokens")
    usage = message.usage
    assert 0 < usage.output_tokens <= 30
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) > 10  # the template's too


def test_the_stream_adds_up_to_the_whole_message(client):
    kwargs = {"model": MODEL, "max_tokens": 30, "extra_body": GREEDY, "messages": FRANCE}
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text and "Paris" in text
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def check_input(block, allowed: set[str]) -> dict:
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert block.name in allowed, block.name
    assert block.input["city"] in CITIES
    if block.name == "get_weather":
        assert isinstance(block.input["days"], int) and 1 <= block.input["days"] <= 7
    return block.input


def test_forced_tool_use_validates_and_its_result_is_continued(client):
    message = client.messages.create(
        model=MODEL,
        max_tokens=160,
        extra_body=GREEDY,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use"
    calls = [b for b in message.content if b.type == "tool_use"]
    assert calls and all(b.type in ("text", "tool_use") for b in message.content)
    for call in calls:
        check_input(call, {"get_weather", "get_time"})
    # The assistant's blocks go back as they came, each call answered by a tool_result.
    results = [
        {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"} for call in calls
    ]
    history = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {"role": "user", "content": results},
    ]
    answer = client.messages.create(
        model=MODEL, max_tokens=40, extra_body=GREEDY, messages=history, tools=[WEATHER, TIME]
    )
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert answer.content and all(b.type in ("text", "tool_use") for b in answer.content)


def test_a_named_tool_streamed(client):
    with client.messages.stream(
        model=MODEL,
        max_tokens=160,
        extra_body=GREEDY,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
    ) as stream:
        final = stream.get_final_message()
    [call] = [b for b in final.content if b.type == "tool_use"]
    assert call.name == "get_time" and final.stop_reason == "tool_use"
    check_input(call, {"get_time"})


def test_count_tokens_is_the_prompt_of_the_message(client):
    counted = client.messages.count_tokens(model=MODEL, messages=FRANCE)
    message = client.messages.create(model=MODEL, max_tokens=1, messages=FRANCE)
    usage = message.usage
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)
    with_tools = client.messages.count_tokens(model=MODEL, messages=FRANCE, tools=[WEATHER])
    assert with_tools.input_tokens > counted.input_tokens


def test_errors_are_the_sdks_exceptions(client, served):
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": [image]}]
        )
    assert refused.value.status_code == 400
    assert "--mmproj" in refused.value.message  # the default model has no projector
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError, match="web_search"):
        client.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=FRANCE,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )
    with pytest.raises(anthropic.AuthenticationError) as unauthorized:
        client_of(served, key="not-the-key").messages.create(
            model=MODEL, max_tokens=5, messages=FRANCE
        )
    assert unauthorized.value.body["error"]["type"] == "authentication_error"


def test_thinking_with_a_budget_is_a_block_before_the_text(thinker):
    client = client_of(thinker)
    message = client.messages.create(
        model="qwen35",
        max_tokens=64,
        extra_body=GREEDY,
        messages=FRANCE,
        thinking={"type": "enabled", "budget_tokens": 16},
    )
    thinking, *rest = message.content
    assert thinking.type == "thinking" and thinking.thinking.strip()
    assert thinking.signature == ""
    assert all(b.type == "text" and "<think>" not in b.text for b in rest)
    assert message.usage.output_tokens <= 64
    # Streamed, the SDK puts the same blocks together.
    with client.messages.stream(
        model="qwen35",
        max_tokens=64,
        extra_body=GREEDY,
        messages=FRANCE,
        thinking={"type": "enabled", "budget_tokens": 16},
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == [b.type for b in message.content]
    assert final.content[0].thinking == thinking.thinking
    # Disabled: the template's empty thinking block, and no thinking in the answer.
    plain = client.messages.create(
        model="qwen35",
        max_tokens=24,
        extra_body=GREEDY,
        messages=FRANCE,
        thinking={"type": "disabled"},
    )
    assert [b.type for b in plain.content] == ["text"]
