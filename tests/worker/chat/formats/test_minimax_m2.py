"""MiniMax M2 tool calls: detection, reading what its template renders for a turn with calls
(whole and as it streams), malformed calls, the grammar."""

from __future__ import annotations

import pytest

from llorch.worker.chat.formats.minimax_m2 import FORMAT

from .family_checks import CALLS, READ_BACK, calls_of, check_malformed, detected


def test_detected_for_its_template_only(templates_dir):
    assert detected(templates_dir, FORMAT) == {"MiniMax-M2"}


def test_reads_what_the_template_renders(template, rendered_reply, stream_parse):
    reply = rendered_reply(template("MiniMax-M2"), CALLS, "I will check.", "]~b]ai\n")
    reply = reply.split("[e~[")[0]  # the end of the turn
    parsed = stream_parse(FORMAT, reply)
    assert parsed.content.strip() == "I will check."
    assert calls_of(parsed) == READ_BACK


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
    check_malformed(FORMAT, text)


WEATHER_INVOKE = (
    '<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n'
    '<parameter name="unit">celsius</parameter>\n</invoke>\n'
)
SEARCH_INVOKE = (
    '<invoke name="search">\n<parameter name="query">x y</parameter>\n'
    '<parameter name="filters">{"site": "a.org", "tags": ["a", "b"]}</parameter>\n</invoke>\n'
)


def _section(*invokes: str) -> str:
    return "<minimax:tool_call>\n" + "".join(invokes) + "</minimax:tool_call>"


def test_grammar(check_call_grammar):
    # Several calls are several <invoke> elements of one block.
    check_call_grammar(
        FORMAT,
        WEATHER_INVOKE,
        SEARCH_INVOKE,
        section=_section,
        refused=[_section(WEATHER_INVOKE.replace("celsius", "kelvin"))],
    )
