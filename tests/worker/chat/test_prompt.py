"""What the chat core reads from real templates, and how it shapes a request's prompt and
grammar: the family, the thinking tags, how arguments and system turns must go in, triggers
that wait for the end of thinking, tools described to templates that take none."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from llorch.worker.chat.prompt import (
    _after_thinking,
    _calls_as_text,
    _describe_tools,
    template_facts,
)
from llorch.worker.chat.reasoning import ThinkTags
from llorch.worker.chat.template import render_template
from llorch.worker.chat.types import Message, Tool, ToolCall

THINK = ThinkTags("<think>", "</think>")
TOOL = Tool(
    "get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}}
)
CALL = ToolCall("call0abcd", "get_weather", '{"city": "Paris"}')
HISTORY = [
    Message("user", "Weather?"),
    Message("assistant", "", tool_calls=(CALL,)),
    Message("tool", "sunny", tool_call_id="call0abcd", name="get_weather"),
    Message("assistant", "It is sunny."),
    Message("user", "Thanks. And tomorrow?"),
]


@pytest.mark.parametrize(
    ("name", "family", "think"),
    [
        ("Qwen-Qwen2.5-7B-Instruct", "hermes", None),
        ("Qwen3.5-4B", "qwen3_coder", "<think>"),
        ("openai-gpt-oss-120b", "gpt_oss", None),
        ("mistralai-Ministral-3-14B-Reasoning-2512", "mistral_small", "[THINK]"),
        ("deepseek-ai-DeepSeek-V3.1", "deepseek_v31", "<think>"),
        ("google-gemma-2-2b-it", "generic", None),
    ],
)
def test_facts_of_real_templates(
    template: Callable[[str], str], name: str, family: str, think: str | None
) -> None:
    facts = template_facts(template(name))
    assert facts.tool_format.name == family
    assert (facts.think.open if facts.think else None) == think


def test_arguments_go_in_as_text_where_the_template_concatenates_them(template) -> None:
    source = template("meetkai-functionary-medium-v3.2")
    facts = template_facts(source)
    assert not facts.object_arguments
    text = render_template(source, HISTORY, tools=[TOOL], object_arguments=False)
    assert '{"city": "Paris"}' in text
    assert template_facts(template("Qwen-Qwen2.5-7B-Instruct")).object_arguments


def test_a_template_without_a_system_turn_gets_the_tools_in_the_first_user_turn(template):
    source = template("google-gemma-2-2b-it")
    facts = template_facts(source)
    assert not facts.takes_system and not facts.takes_tools
    turns = _calls_as_text(_describe_tools(list(HISTORY), [TOOL], False, answer_format=True))
    text = render_template(source, turns)  # Gemma 2 refuses system and tool turns
    assert '"name": "get_weather"' in text and '{"tool_calls"' in text
    assert '"tool_response"' in text


@pytest.mark.parametrize(
    ("trigger", "after", "inside"),
    [
        ("<tool_call>", "x</think>\n<tool_call>", "x <tool_call> </think>"),
        (r"^\s*\{\"name\"", 'x</think>\n\n{"name"', 'x {"name" </think>'),
    ],
)
def test_triggers_wait_for_the_end_of_thinking(trigger: str, after: str, inside: str) -> None:
    pattern = _after_thinking(trigger, THINK)
    match = re.search(pattern, after)
    assert match is not None
    # The grammar starts at the first group: the call's own text, not the thinking.
    assert after[match.start(1) :].lstrip().startswith(("<tool_call>", '{"name"'))
    assert re.search(pattern, inside) is None
    assert _after_thinking(trigger, None) == trigger


@pytest.mark.parametrize(
    "name",
    [
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
        "Qwen3-Coder",
        "meta-llama-Llama-3.1-8B-Instruct",
        "mistralai-Mistral-Nemo-Instruct-2407",
        "Mistral-Small-3.2-24B-Instruct-2506",
        "openai-gpt-oss-120b",
        "llama-cpp-deepseek-r1",
        "deepseek-ai-DeepSeek-V3.1",
        "ibm-granite-granite-3.3-2B-Instruct",
        "GLM-4.6",
        "Kimi-K2-Instruct",
        "MiniMax-M2",
        "meetkai-functionary-medium-v3.1",
        "meetkai-functionary-medium-v3.2",
        "fireworks-ai-llama-3-firefunction-v2",
        "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
        "google-gemma-4-31B-it",
    ],
)
def test_every_familys_template_renders_calls_and_results(template, name: str) -> None:
    source = template(name)
    facts = template_facts(source)
    turns = HISTORY if facts.shows_calls else _calls_as_text(list(HISTORY), results=False)
    text = render_template(source, turns, tools=[TOOL], object_arguments=facts.object_arguments)
    assert "get_weather" in text and "sunny" in text and "Paris" in text
    # Only Granite 3.3's template drops an assistant's calls (the core then writes them out).
    assert facts.shows_calls == (name != "ibm-granite-granite-3.3-2B-Instruct")


def test_a_tool_lists_grammar_is_made_once_and_equals_the_formats_own():
    from llorch.worker.chat import formats
    from llorch.worker.chat.prompt import _cached_tool_grammar, _tool_grammar

    hermes = formats.load("hermes")
    tools = [
        TOOL,
        Tool("get_time", None, {"type": "object", "properties": {"z": {"type": "integer"}}}),
    ]
    _cached_tool_grammar.cache_clear()
    first = _tool_grammar(hermes, tools, True)
    assert first == hermes.grammar(tools, parallel=True)
    assert _tool_grammar(hermes, list(tools), True) is first  # the same list, sent again
    assert _tool_grammar(hermes, tools, False) != first  # parallel or not: two grammars
    assert _cached_tool_grammar.cache_info().hits == 1


def test_a_bad_schema_is_refused_every_time_not_cached():
    from llorch.worker.backend.errors import InvalidRequestError
    from llorch.worker.backend.grammar import json_grammar

    bad = {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}
    for _ in range(2):
        with pytest.raises(InvalidRequestError):
            json_grammar(bad)
    assert json_grammar({"type": "integer"}) == json_grammar({"type": "integer"})
