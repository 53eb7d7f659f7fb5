"""End to end: the official `openai` client against `llorch serve` with the real default model."""

from __future__ import annotations

import json

import openai
import pytest
from support import FRANCE, WorkerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(worker: WorkerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key="unused", timeout=120, max_retries=0)


def test_models_lists_the_served_model(client):
    [model] = client.models.list().data
    assert model.id and model.object == "model"
    assert client.models.retrieve(model.id).id == model.id


def test_completion_greedy_paris(client):
    completion = client.completions.create(
        model="default", prompt=FRANCE, max_tokens=8, temperature=0
    )
    choice = completion.choices[0]
    assert choice.text.startswith(" Paris"), choice.text
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.completion_tokens <= 8
    assert usage.prompt_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_completion_stream_matches_the_whole_answer(client):
    whole = client.completions.create(model="m", prompt=FRANCE, max_tokens=12, temperature=0)
    stream = client.completions.create(
        model="m",
        prompt=FRANCE,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text and text.startswith(" Paris")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_max_tokens_gives_length(client):
    completion = client.completions.create(
        model="m", prompt="Once upon a time", max_tokens=3, temperature=0
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_chat_with_the_builtin_gemma_template(client):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(
        model="m", messages=messages, max_tokens=24, temperature=0, seed=1
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    # The prompt went through the template: far more tokens than the question alone.
    assert reply.usage.prompt_tokens >= 15
    assert "<start_of_turn>" not in choice.message.content


def test_chat_stream(client):
    messages = [{"role": "user", "content": "Name a color."}]
    kwargs = {"model": "m", "messages": messages, "max_tokens": 10, "temperature": 0}
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_errors_arrive_as_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="m", prompt="Hi", n=17)
    assert info.value.param == "n"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="m", prompt="Hi", max_tokens=1 << 19)
    assert info.value.code == "context_length_exceeded"


def test_json_schema_response_format_constrains_the_output(client):
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "maxLength": 12}},
        "required": ["capital"],
        "additionalProperties": False,
    }
    completion = client.completions.create(
        model="m",
        prompt=FRANCE,
        max_tokens=24,
        temperature=0,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}},
    )
    document = json.loads(completion.choices[0].text)
    assert set(document) == {"capital"} and len(document["capital"]) <= 12


def test_cached_prompt_tokens_and_fingerprint_are_reported(client):
    system = "You are a terse assistant. " * 20
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]
    first = client.chat.completions.create(
        model="m", messages=messages, max_tokens=2, temperature=0
    )
    second = client.chat.completions.create(
        model="m", messages=messages, max_tokens=2, temperature=0
    )
    assert first.system_fingerprint and first.system_fingerprint == second.system_fingerprint
    details = second.usage.prompt_tokens_details
    assert details is not None
    # The second reads the shared prefix from the cache: all of it but the last token.
    assert details.cached_tokens == second.usage.prompt_tokens - 1


def test_completion_logprobs_and_echo_for_likelihoods(client):
    # What lm-evaluation-harness sends for loglikelihood: echo, max_tokens 0, logprobs 1.
    scored = client.completions.create(
        model="m", prompt=FRANCE + " Paris", max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    choice = scored.choices[0]
    assert choice.text == FRANCE + " Paris"
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.token_logprobs[0] is None
    assert logprobs.tokens[-1] == " Paris" and -3.0 < logprobs.token_logprobs[-1] <= 0.0
    assert all(v is not None and v <= 0.0 for v in logprobs.token_logprobs[1:])
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    # " Paris" is the greedy continuation: it is the top alternative at its position.
    top = logprobs.top_logprobs[-1]
    assert max(top, key=top.get) == " Paris"
    # Generating with logprobs: the greedy tokens are the top alternatives.
    answer = client.completions.create(
        model="m", prompt=FRANCE, max_tokens=3, logprobs=3, temperature=0
    )
    lp = answer.choices[0].logprobs
    assert "".join(lp.tokens) == answer.choices[0].text
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert max(top, key=top.get) == token and top[token] == value


def test_chat_logprobs_shape(client):
    completion = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = completion.choices[0].logprobs.content
    assert len(content) == completion.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0.0 and bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].token == entry.token  # greedy


def test_n_choices_with_the_official_client(client):
    completion = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=5,
        n=3,
        seed=11,
        temperature=1.0,
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.message.content for c in completion.choices)
    assert completion.usage.completion_tokens >= 3  # counted over all choices
    stream = client.completions.create(
        model="m", prompt=FRANCE, max_tokens=4, n=2, temperature=0, stream=True
    )
    texts = {0: "", 1: ""}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    # Greedy: both choices are the same text, read from one prompt.
    assert texts[0] == texts[1] and texts[0].startswith(" Paris")
