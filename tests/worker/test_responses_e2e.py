"""End to end: the official `openai` client's Responses API (and the OpenAI Agents SDK over it and
over chat completions) against `llorch serve` in its default set-up, whose chat model,
SmolLM2-135M-Instruct, answers requests that name a model it does not serve."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import openai
import pytest
from support import WorkerProcess, start_worker

from llorch.worker import models
from llorch.worker.backend.errors import ModelLoadError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = models.CHAT_MODEL_NAME
# Greedy, SmolLM2-135M-Instruct answers this "The capital of France is Paris."
QUESTION = "What is the capital of France? Answer in one sentence."
INSTRUCTIONS = "You are a terse geography assistant."
QUESTION_WEATHER = "What is the weather in Paris?"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def chat_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    try:
        models.chat_model_path()  # fetched once, reused from the cache after that
    except ModelLoadError as exc:
        pytest.fail(str(exc))
    worker = start_worker(tmp_path_factory.mktemp("responses-worker"))  # no flags
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def client(chat_worker: WorkerProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{chat_worker.url}/v1", api_key="unused", timeout=300, max_retries=0
    )


def ask(client: openai.OpenAI, **kwargs):
    return client.responses.create(
        **{"model": MODEL, "temperature": 0, "max_output_tokens": 40} | kwargs
    )


def test_a_plain_response(client):
    response = ask(client, input=QUESTION)
    assert response.status == "completed" and response.model == MODEL
    assert "Paris" in response.output_text, response.output_text
    assert [item.type for item in response.output] == ["message"]
    usage = response.usage
    assert usage is not None and usage.input_tokens > 10 and usage.output_tokens > 3
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    # A name the worker does not serve goes to the chat model too (clients always send one).
    assert ask(client, input=QUESTION, model="gpt-5").output_text == response.output_text


def test_streamed_responses_match_the_whole_one(client):
    whole = ask(client, input=QUESTION)
    with client.responses.stream(
        model=MODEL, input=QUESTION, temperature=0, max_output_tokens=40
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == whole.output_text
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.completed"
    events = list(ask(client, input=QUESTION, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage.output_tokens == whole.usage.output_tokens


def test_a_forced_function_call_and_its_output_continued(client):
    ask_weather = {"input": QUESTION_WEATHER, "tools": [WEATHER]}
    response = ask(client, **ask_weather, tool_choice="required", parallel_tool_calls=False)
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    arguments = json.loads(call.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "21 C, sunny"}
    # The client sends the whole conversation back...
    items = [{"role": "user", "content": ask_weather["input"]}, call.model_dump(), result]
    sent = ask(client, input=items, tools=[WEATHER], tool_choice="none")
    # ... or only the output, continuing the stored response.
    stored = ask(
        client,
        input=[result],
        previous_response_id=response.id,
        tools=[WEATHER],
        tool_choice="none",
    )
    for answer in (sent, stored):
        assert answer.status in ("completed", "incomplete")
        assert [item.type for item in answer.output] == ["message"] and answer.output_text
    assert stored.output_text == sent.output_text
    assert stored.usage.input_tokens == sent.usage.input_tokens


def test_previous_response_id_continues_on_the_cached_prefix(client):
    first = ask(client, input=QUESTION, instructions=INSTRUCTIONS)
    second = ask(
        client,
        input="And of Germany?",
        instructions=INSTRUCTIONS,
        previous_response_id=first.id,
    )
    assert "Berlin" in second.output_text, second.output_text
    assert second.previous_response_id == first.id
    # The second prompt starts with the first prompt and its answer, which the KV cache holds.
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached > 0
    assert cached >= first.usage.input_tokens
    assert client.responses.retrieve(first.id).output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as info:
        ask(client, input="And of Spain?", previous_response_id=first.id)
    assert info.value.param == "previous_response_id"


def test_input_tokens_counts_what_a_response_reads(client):
    counted = client.responses.input_tokens.count(
        model=MODEL, input=QUESTION, instructions=INSTRUCTIONS, tools=[WEATHER]
    )
    response = ask(
        client, input=QUESTION, instructions=INSTRUCTIONS, tools=[WEATHER], max_output_tokens=1
    )
    assert counted.object == "response.input_tokens"
    assert counted.input_tokens == response.usage.input_tokens
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"


def test_refusals_arrive_as_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, input=QUESTION, tools=[{"type": "web_search"}])
    assert info.value.param == "tools[0].type" and "web_search" in info.value.message
    image = {"type": "input_image", "image_url": "https://example.com/a.png"}
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, input=[{"role": "user", "content": [image]}])
    assert info.value.param == "input[0].content[0].image_url" and "--mmproj" in info.value.message


def test_an_agents_sdk_agent_calls_its_tool_over_both_apis(chat_worker: WorkerProcess):
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)  # traces would go to OpenAI
    cities: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather of a city."""
        cities.append(city)
        return f"21 C and sunny in {city}"

    async def run() -> list[str]:
        client = openai.AsyncOpenAI(
            base_url=f"{chat_worker.url}/v1", api_key="unused", timeout=300, max_retries=0
        )

        def agent(model: object) -> object:
            # The 135M model calls the tool when it must; its result is the answer.
            return agents.Agent(
                name="weather",
                instructions="Answer weather questions with the tool.",
                tools=[get_weather],
                model=model,
                model_settings=agents.ModelSettings(
                    tool_choice="required", temperature=0, parallel_tool_calls=False, max_tokens=60
                ),
                tool_use_behavior="stop_on_first_tool",
            )

        responses = agent(agents.OpenAIResponsesModel(MODEL, client))
        chat = agent(agents.OpenAIChatCompletionsModel(MODEL, client))
        answers = [
            (await agents.Runner.run(each, QUESTION_WEATHER, max_turns=2)).final_output
            for each in (responses, chat)
        ]
        streamed = agents.Runner.run_streamed(responses, QUESTION_WEATHER, max_turns=2)
        async for _ in streamed.stream_events():
            pass
        return [*answers, streamed.final_output]

    answers = asyncio.run(run())
    assert len(cities) == 3, cities  # one call per run, then the tool's result is the answer
    assert answers == [f"21 C and sunny in {city}" for city in cities]
    assert all("Paris" in city for city in cities)
