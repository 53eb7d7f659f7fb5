"""Granite 3.x tool calls: detection (Granite 4 writes Hermes' syntax and is left to it),
reading the JSON list after <|tool_call|> (whole and as it streams), malformed calls, the
grammar."""

from __future__ import annotations

import json

import pytest

from llorch.worker.chat.formats import detect
from llorch.worker.chat.formats.base import MalformedCall
from llorch.worker.chat.formats.granite import FORMAT

WEATHER = {"city": "Paris", "days": 3}
SEARCH = {"query": "x y", "filters": {"site": "a.org", "tags": ["a", "b"]}}


def test_detected_for_granite_3_only(templates_dir, template):
    found = {
        path.stem
        for path in templates_dir.glob("*.jinja")
        if detect(path.read_text(encoding="utf-8")).name == FORMAT.name
    }
    assert found == {"ibm-granite-granite-3.3-2B-Instruct"}
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
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        ("get_weather", WEATHER),
        ("search", SEARCH),
    ]


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
    FORMAT.parse(text, partial=True)
    with pytest.raises(MalformedCall):
        FORMAT.parse(text, partial=False)


def _call(name: str, arguments: str) -> str:
    return f'{{"name": "{name}", "arguments": {arguments}}}'


WEATHER_CALL = _call("get_weather", '{"city": "Paris", "unit": "celsius", "days": 3}')
SEARCH_CALL = _call("search", '{"query": "x y", "filters": {"site": "a.org", "tags": ["a"]}}')


def test_grammar(check_call_grammar, grammar_accepts, schema_tools):
    check_call_grammar(
        FORMAT,
        f"<|tool_call|>[{WEATHER_CALL}]",
        f"<|tool_call|>[{SEARCH_CALL}]",
        parallel_differs=False,
        refused=[f"<|tool_call|>[{_call('get_weather', '{}')}]"],
    )
    both = f"<|tool_call|>[{WEATHER_CALL}, {SEARCH_CALL}]"
    assert grammar_accepts(FORMAT.grammar(schema_tools, parallel=True).gbnf, both)
    assert not grammar_accepts(FORMAT.grammar(schema_tools, parallel=False).gbnf, both)
    assert [c.name for c in FORMAT.parse(both, partial=False).calls] == ["get_weather", "search"]
