"""Tool calling end to end: the real SmolLM2-135M-Instruct served under llama.cpp's collection of
real chat templates (one model name per template, `--chat-template-file NAME=PATH`), driven by
the official openai client, plain and streamed.

A 135M model knows none of these formats, so what is checked is what the worker guarantees
whatever the model: a forced call (`required`, or a named function) always parses, names a
given tool and has arguments valid under its schema, in every family's syntax; no markup
reaches the content; `none` parses nothing; a tool result is continued; `auto` answers either
text or a valid call, never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import THREADS, WorkerProcess, start_worker

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.e2e

# Family -> a real template of the family in the sdist's models/templates.
TEMPLATES = {
    "hermes": "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
    "qwen25": "Qwen-Qwen2.5-7B-Instruct",
    "qwen3": "Qwen-Qwen3-0.6B",
    "smollm3": "HuggingFaceTB-SmolLM3-3B",
    "qwen3-coder": "Qwen3-Coder",
    "qwen35": "Qwen3.5-4B",
    "llama31": "meta-llama-Llama-3.1-8B-Instruct",
    "llama32": "meta-llama-Llama-3.2-3B-Instruct",
    "llama33": "meta-llama-Llama-3.3-70B-Instruct",
    "mistral-nemo": "mistralai-Mistral-Nemo-Instruct-2407",
    "mistral-small": "Mistral-Small-3.2-24B-Instruct-2506",
    "ministral3": "mistralai-Ministral-3-14B-Reasoning-2512",
    "devstral": "unsloth-mistral-Devstral-Small-2507",
    "gpt-oss": "openai-gpt-oss-120b",
    "deepseek-r1": "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
    "deepseek-v31": "deepseek-ai-DeepSeek-V3.1",
    "deepseek-v32": "deepseek-ai-DeepSeek-V3.2",
    "deepseek-v4": "deepseek-ai-DeepSeek-V4",
    "seed-oss": "ByteDance-Seed-OSS",
    "nemotron-v2": "NVIDIA-Nemotron-Nano-v2",
    "apriel": "unsloth-Apriel-1.5",
    "minimax-m1": "MiniMax-M1",
    "apertus": "Apertus-8B-Instruct",
    "lfm2": "LFM2.5-8B-A1B",
    "solar-open": "upstage-Solar-Open-100B",
    "granite33": "ibm-granite-granite-3.3-2B-Instruct",
    "granite40": "ibm-granite-granite-4.0",
    "glm46": "GLM-4.6",
    "kimi-k2": "Kimi-K2-Instruct",
    "minimax-m2": "MiniMax-M2",
    "functionary31": "meetkai-functionary-medium-v3.1",
    "functionary32": "meetkai-functionary-medium-v3.2",
    "firefunction2": "fireworks-ai-llama-3-firefunction-v2",
    "command-r7b": "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
    "gemma4": "google-gemma-4-31B-it",
    "generic": "google-gemma-2-2b-it",  # takes no tools: the generic JSON format
}
CITIES = ["Paris", "London", "Tokyo"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": CITIES},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": CITIES}},
            "required": ["city"],
        },
    },
}
# Every request of a family offers the same tools: its prompts then share their prefix, which
# the slot keeps from one request to the next (the family's tests run one after the other).
TOOLS = [WEATHER, TIME]
ASK = [{"role": "user", "content": "What will the weather be in Paris for the next 2 days?"}]
# What every family's markup starts with (none may reach a client's content).
MARKUP = ("<tool_call>", "[TOOL_CALLS]", "<|channel|>", "<function=", "<\uff5ctool", "functools[",
          "<|tool_call", "<|python_tag|>", "<minimax:tool_call>", "<|START_ACTION|>",
          "<|tool_calls_section_begin|>", '{"tool_calls"', "<\uff5cDSML\uff5c", "<seed:tool_call>",
          "<TOOLCALL>", "<tool_calls>", "<|tools_prefix|>", "<|tool_call_start|>",
          "<|tool_calls|>")  # fmt: skip
# No thinking (budget 0) in forced requests: the call itself is what they check.
NO_THINKING = {"reasoning_budget": 0}
# Room for a whole call section: SmolLM2's vocabulary spells DeepSeek's markers
# (<｜tool▁calls▁begin｜>...) a byte at a time, ~110 tokens of markup around one call.  # noqa: RUF003
FORCED_TOKENS = 200


@pytest.fixture(scope="module")
def tools_worker(tmp_path_factory: pytest.TempPathFactory, templates_dir: Path) -> Iterator[str]:
    from llorch.worker.models import chat_model_path

    gguf = chat_model_path()
    args: list[str] = ["--ctx-size", "2048", "--parallel", "1", "--threads", str(THREADS)]
    for name, file in TEMPLATES.items():
        args += ["--model", f"{name}={gguf}"]
        args += ["--chat-template-file", f"{name}={templates_dir / (file + '.jinja')}"]
    # One loaded at a time: each family's requests load it on demand (SmolLM2 loads in ~0.2 s).
    proc: WorkerProcess = start_worker(
        tmp_path_factory.mktemp("tools"), *args, "--max-models", "1", ready_timeout=180
    )
    yield proc.url
    proc.stop()


@pytest.fixture(scope="module")
def client(tools_worker: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=tools_worker + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module", params=list(TEMPLATES))
def family(request: pytest.FixtureRequest) -> str:
    """A model name of the worker: module-scoped, so pytest runs each family's tests together
    and its model is loaded once, its prompt read once."""
    return str(request.param)


def check_call(call: object, allowed: set[str]) -> dict:
    function = call.function  # type: ignore[attr-defined]
    assert call.type == "function" and call.id  # type: ignore[attr-defined]
    assert function.name in allowed, function.name
    arguments = json.loads(function.arguments)
    assert arguments["city"] in CITIES
    if function.name == "get_weather":
        days = arguments["days"]
        assert isinstance(days, int) and 1 <= days <= 7, days
    return arguments


def no_markup(text: str | None) -> None:
    assert not any(m in (text or "") for m in MARKUP), text


def test_forced_calls_parse_and_validate(client: openai.OpenAI, family: str) -> None:
    required = client.chat.completions.create(
        model=family,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        # One call: under a grammar that allows several, a 135M model keeps writing calls.
        parallel_tool_calls=False,
        max_tokens=FORCED_TOKENS,
        temperature=0,
        extra_body=NO_THINKING,
    )
    choice = required.choices[0]
    # The grammar ends with the call section: only the end of turn may follow it.
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        check_call(call, {"get_weather", "get_time"})
    no_markup(choice.message.content)

    # A named function, streamed: the deltas add up to one call of that function.
    stream = client.chat.completions.create(
        model=family,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        max_tokens=FORCED_TOKENS,
        temperature=0,
        stream=True,
        extra_body=NO_THINKING,
    )
    content, names, arguments, finish = "", {}, {}, None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for part in delta.tool_calls or []:
            if part.id:
                names[part.index] = part.function.name
            arguments[part.index] = arguments.get(part.index, "") + (part.function.arguments or "")
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert names == {0: "get_time"}
    assert json.loads(arguments[0])["city"] in CITIES
    no_markup(content)


def test_auto_none_and_a_tool_result(client: openai.OpenAI, family: str) -> None:
    auto = client.chat.completions.create(
        model=family, messages=ASK, tools=TOOLS, max_tokens=32, temperature=0
    )
    message = auto.choices[0].message
    if message.tool_calls:
        assert auto.choices[0].finish_reason == "tool_calls"
        for call in message.tool_calls:
            json.loads(call.function.arguments)
    else:
        assert auto.choices[0].finish_reason in ("stop", "length")
    # none, streamed: text deltas only.
    none = client.chat.completions.create(
        model=family,
        messages=ASK,
        tools=TOOLS,
        tool_choice="none",
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    finishes = []
    for chunk in none:
        if chunk.choices:
            assert not chunk.choices[0].delta.tool_calls
            finishes.append(chunk.choices[0].finish_reason)
    assert finishes[-1] in ("stop", "length")
    # The call and its result go back through the template, which renders them.
    call_id = "call0abcd"  # 9 alphanumerics: Mistral's templates accept no other ids
    turns = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "days": 2}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": '{"forecast": "sunny, 21 C"}'},
    ]
    after = client.chat.completions.create(
        model=family, messages=turns, tools=TOOLS, max_tokens=16, temperature=0
    )
    assert after.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_thinking_is_separated_streamed_and_budgeted(client: openai.OpenAI) -> None:
    # Qwen 3.5's generation prompt opens <think>: whatever the model writes first is thinking,
    # until it closes the block or the budget closes it for the model.
    budget = {"reasoning_budget": 12}
    whole = client.chat.completions.create(
        model="qwen35", messages=ASK, max_tokens=40, temperature=0, extra_body=budget
    )
    message = whole.choices[0].message
    reasoning = message.model_extra.get("reasoning_content")
    assert reasoning and "<think>" not in reasoning and "</think>" not in reasoning
    assert message.content and "</think>" not in message.content
    details = whole.usage.completion_tokens_details
    assert details is not None and 0 < details.reasoning_tokens <= 12 + 4  # + the closing tag
    stream = client.chat.completions.create(
        model="qwen35", messages=ASK, max_tokens=40, temperature=0, stream=True, extra_body=budget
    )
    thought, said, order = "", "", []
    for chunk in stream:
        delta = chunk.choices[0].delta
        if (delta.model_extra or {}).get("reasoning_content"):
            thought += delta.model_extra["reasoning_content"]
            order.append("r")
        if delta.content:
            said += delta.content
            order.append("c")
    assert (thought, said) == (reasoning, message.content)
    assert order == sorted(order, reverse=True)  # all thinking, then all answer
    kept = client.chat.completions.create(
        model="qwen35",
        messages=ASK,
        max_tokens=40,
        temperature=0,
        extra_body=budget | {"reasoning_format": "none"},
    )
    assert not (kept.choices[0].message.model_extra or {}).get("reasoning_content")
    assert reasoning in (kept.choices[0].message.content or "")
