"""Granite 3.x tool calls: detection (Granite 4 writes Hermes' syntax and is left to it),
reading the JSON list after <|tool_call|> (whole and as it streams), malformed calls, the
grammar."""

from __future__ import annotations

import json

import pytest

from llorch.worker.chat.formats import detect
from llorch.worker.chat.formats.granite import FORMAT

from .family_checks import (
    READ_BACK,
    SEARCH,
    SEARCH_ARGUMENTS,
    WEATHER,
    WEATHER_ARGUMENTS,
    calls_of,
    check_malformed,
    detected,
)


def test_detected_for_granite_3_only(templates_dir, template):
    assert detected(templates_dir, FORMAT) == {"ibm-granite-granite-3.3-2B-Instruct"}
    # Granite 4.0 and 4.1 render each call as <tool_call>\n{"name": ..., "arguments": ...}
    # \n</tool_call>, Hermes' syntax exactly.
    for name in ("ibm-granite-granite-4.0", "ibm-granite-granite-4.1"):
        assert detect(template(name)).name == "hermes"


def test_reads_the_list_of_calls(stream_parse):
    # The template's system prompt asks for "<|tool_call|> followed by a JSON list"; the
    # template itself does not render calls of earlier turns.
    calls = [
        {"name": "get_weather", "arguments": WEATHER},
        {"arguments": SEARCH, "name": "search"},  # in either order
    ]
    parsed = stream_parse(FORMAT, "Let me see.<|tool_call|>" + json.dumps(calls))
    assert parsed.content == "Let me see."
    assert calls_of(parsed) == READ_BACK


def test_a_single_object_and_a_call_without_arguments(stream_parse):
    (call,) = stream_parse(FORMAT, '<|tool_call|>{"name": "now"}').calls
    assert (call.name, call.arguments) == ("now", "{}")


def test_partial_arguments_are_the_text_so_far():
    text = '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Par'
    (call,) = FORMAT.parse(text, partial=True).calls
    assert (call.name, call.arguments, call.complete) == ("get_weather", '{"city": "Par', False)
    assert FORMAT.parse('<|tool_call|>[{"name": "get_w', partial=True).calls == ()


@pytest.mark.parametrize(
    "text",
    [
        '<|tool_call|>[{"name": "f", "arguments": {"a": 1}',
        '<|tool_call|>[{"name": "f", "arguments": [1]}]',
        '<|tool_call|>[{"arguments": {}}]',
        "<|tool_call|>get_weather(city='Paris')",
    ],
)
def test_malformed_calls(text):
    check_malformed(FORMAT, text)


def _call(name: str, arguments: str) -> str:
    return f'{{"name": "{name}", "arguments": {arguments}}}'


def _list(*calls: str) -> str:
    return f"<|tool_call|>[{', '.join(calls)}]"


def test_grammar(check_call_grammar):
    check_call_grammar(
        FORMAT,
        _call("get_weather", WEATHER_ARGUMENTS),
        _call("search", SEARCH_ARGUMENTS),
        section=_list,
        refused=[_list(_call("get_weather", "{}"))],
    )
