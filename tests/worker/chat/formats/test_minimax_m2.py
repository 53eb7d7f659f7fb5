"""MiniMax M2 tool calls: detection, reading what its template renders for a turn with calls
(whole and as it streams), malformed calls, the grammar."""

from __future__ import annotations

import json

import pytest

from llorch.worker.chat.formats import detect
from llorch.worker.chat.formats.base import MalformedCall
from llorch.worker.chat.formats.minimax_m2 import FORMAT

WEATHER = {"city": "Paris", "days": 3}
SEARCH = {"query": "x y", "filters": {"site": "a.org", "tags": ["a", "b"]}}
CALLS = [{"name": "get_weather", "arguments": WEATHER}, {"name": "search", "arguments": SEARCH}]


def test_detected_for_its_template_only(templates_dir):
    found = {
        path.stem
        for path in templates_dir.glob("*.jinja")
        if detect(path.read_text(encoding="utf-8")).name == FORMAT.name
    }
    assert found == {"MiniMax-M2"}


def test_reads_what_the_template_renders(template, rendered_reply, stream_parse):
    reply = rendered_reply(template("MiniMax-M2"), CALLS, "I will check.", "]~b]ai\n")
    reply = reply.split("[e~[")[0]  # the end of the turn
    parsed = stream_parse(FORMAT, reply)
    assert parsed.content.strip() == "I will check."
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        (call["name"], call["arguments"]) for call in CALLS
    ]


def test_partial_arguments_are_the_completed_parameters():
    text = '<minimax:tool_call>\n<invoke name="f">\n<parameter name="a">1</parameter>\n<param'
    (call,) = FORMAT.parse(text, partial=True).calls
    assert (call.name, call.arguments, call.complete) == ("f", '{"a": 1', False)
    assert FORMAT.parse('<minimax:tool_call>\n<invoke name="f', partial=True).calls == ()
    assert FORMAT.parse("Hi <minimax:tool", partial=True).content == "Hi "


@pytest.mark.parametrize(
    "text",
    [
        '<minimax:tool_call>\n<invoke name="f">\n<parameter name="a">1',
        '<minimax:tool_call>\n<invoke name="f">\n</invoke>\n',
        '<minimax:tool_call>\n{"name": "f"}\n</minimax:tool_call>',
    ],
)
def test_malformed_calls(text):
    FORMAT.parse(text, partial=True)
    with pytest.raises(MalformedCall):
        FORMAT.parse(text, partial=False)


FIRST = (
    '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n'
    '<parameter name="unit">celsius</parameter>\n</invoke>\n</minimax:tool_call>'
)
SECOND_INVOKE = (
    '<invoke name="search">\n<parameter name="query">x y</parameter>\n'
    '<parameter name="filters">{"site": "a.org", "tags": ["a", "b"]}</parameter>\n</invoke>\n'
)
SECOND = f"<minimax:tool_call>\n{SECOND_INVOKE}</minimax:tool_call>"


def test_grammar(check_call_grammar, grammar_accepts, schema_tools):
    # Several calls are several <invoke> elements of one block.
    check_call_grammar(FORMAT, schema_tools, FIRST, SECOND, parallel_differs=False)
    both = FIRST.replace("</minimax:tool_call>", SECOND_INVOKE + "</minimax:tool_call>")
    assert grammar_accepts(FORMAT.grammar(schema_tools, parallel=True).gbnf, both)
    assert not grammar_accepts(FORMAT.grammar(schema_tools, parallel=False).gbnf, both)
    assert [c.name for c in FORMAT.parse(both, partial=False).calls] == ["get_weather", "search"]
    single = FORMAT.grammar(schema_tools, parallel=False).gbnf
    assert not grammar_accepts(single, FIRST.replace("celsius", "kelvin"))
