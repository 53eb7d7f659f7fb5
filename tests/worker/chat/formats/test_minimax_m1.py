"""MiniMax M1 tool calls: detection, reading what its template renders for a turn with calls
(whole and as it streams), malformed calls, the grammar."""

from __future__ import annotations

import pytest

from llorch.worker.chat.formats.minimax_m1 import FORMAT

from .family_checks import (
    CALLS,
    READ_BACK,
    SEARCH_ARGUMENTS,
    WEATHER_ARGUMENTS,
    calls_of,
    check_malformed,
    detected,
)


def test_detected_for_its_template_only(templates_dir):
    assert detected(templates_dir, FORMAT) == {"MiniMax-M1"}


def test_reads_what_the_template_renders(template, rendered_reply, stream_parse):
    # The template writes no content beside calls.
    header = "<beginning_of_sentence>ai name=assistant\n"
    reply = rendered_reply(template("MiniMax-M1"), CALLS, None, header)
    reply = reply.split("<end_of_sentence>")[0]
    parsed = stream_parse(FORMAT, reply)
    assert parsed.content == ""
    assert calls_of(parsed) == READ_BACK


def test_partial_call_appears_with_its_name():
    text = '<tool_calls>\n{"name": "get_weather", "arguments": {"city": "Pa'
    (call,) = FORMAT.parse(text, partial=True).calls
    assert (call.name, call.arguments, call.complete) == ("get_weather", '{"city": "Pa', False)
    assert FORMAT.parse('<tool_calls>\n{"name": "get_', partial=True).calls == ()
    assert FORMAT.parse("Hi <tool_c", partial=True).content == "Hi"


@pytest.mark.parametrize(
    "text",
    [
        '<tool_calls>\n{"name": "f", "arguments": {"a": ',
        '<tool_calls>\n{"name": "f", "arguments": [1]}\n</tool_calls>',
        "<tool_calls>\nf(1)\n</tool_calls>",
    ],
)
def test_malformed_calls(text):
    check_malformed(FORMAT, text)


def _call(name: str, arguments: str) -> str:
    return f'{{"name": "{name}", "arguments": {arguments}}}'


def _section(*calls: str) -> str:
    return "<tool_calls>\n" + "\n".join(calls) + "\n</tool_calls>"


def test_grammar(check_call_grammar):
    check_call_grammar(
        FORMAT,
        _call("get_weather", WEATHER_ARGUMENTS),
        _call("search", SEARCH_ARGUMENTS),
        section=_section,
        refused=[_section(_call("get_weather", '{"city": "Paris", "days": "3"}'))],
    )
