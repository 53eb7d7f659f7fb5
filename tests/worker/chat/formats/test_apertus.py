"""Apertus tool calls ({"NAME": arguments} objects in a list between tool tokens): detection,
reading what its template renders for a turn with calls (whole and as it streams), malformed
calls, the grammar."""

from __future__ import annotations

import pytest

from llorch.worker.chat.formats.apertus import FORMAT

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
    assert detected(templates_dir, FORMAT) == {"Apertus-8B-Instruct"}


def test_reads_what_the_template_renders(template, rendered_reply, stream_parse):
    reply = rendered_reply(
        template("Apertus-8B-Instruct"), CALLS, "I will check.", "<|assistant_start|>"
    )
    reply = reply.split("<|assistant_end|>")[0]
    parsed = stream_parse(FORMAT, reply)
    assert parsed.content == "I will check."
    assert calls_of(parsed) == READ_BACK


def test_partial_call_appears_with_its_name():
    text = '<|tools_prefix|>[{"get_weather": {"city": "Pa'
    (call,) = FORMAT.parse(text, partial=True).calls
    assert (call.name, call.arguments, call.complete) == ("get_weather", '{"city": "Pa', False)
    assert FORMAT.parse('<|tools_prefix|>[{"get_', partial=True).calls == ()
    assert FORMAT.parse("Hi <|tools_", partial=True).content == "Hi"


@pytest.mark.parametrize(
    "text",
    [
        '<|tools_prefix|>[{"f": {"a": ',
        '<|tools_prefix|>[{"f": [1]}]<|tools_suffix|>',
        '<|tools_prefix|>[{"f": {}, "g": {}}]<|tools_suffix|>',
        "<|tools_prefix|>f(1)<|tools_suffix|>",
    ],
)
def test_malformed_calls(text):
    check_malformed(FORMAT, text)


def _call(name: str, arguments: str) -> str:
    return f'{{"{name}": {arguments}}}'


def _section(*calls: str) -> str:
    return "<|tools_prefix|>[" + ", ".join(calls) + "]<|tools_suffix|>"


def test_grammar(check_call_grammar):
    check_call_grammar(
        FORMAT,
        _call("get_weather", WEATHER_ARGUMENTS),
        _call("search", SEARCH_ARGUMENTS),
        section=_section,
        refused=[_section(_call("get_weather", '{"city": "Paris", "days": "3"}'))],
    )
