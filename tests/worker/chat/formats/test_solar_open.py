"""Solar Open tool calls: detection, reading what its template renders for a turn with calls
(whole and as it streams, with their ids), malformed calls, the grammar."""

from __future__ import annotations

import pytest

from llorch.worker.chat.formats.solar_open import FORMAT

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
    assert detected(templates_dir, FORMAT) == {"upstage-Solar-Open-100B"}


def test_reads_what_the_template_renders(template, rendered_reply, stream_parse):
    # The template writes calls as an assistant message of their own (content goes in another).
    reply = rendered_reply(template("upstage-Solar-Open-100B"), CALLS, None, "<|begin|>assistant")
    parsed = stream_parse(FORMAT, reply)
    assert parsed.content == ""
    assert calls_of(parsed) == READ_BACK
    assert [call.id for call in parsed.calls] == ["call_0", "call_1"]


def test_partial_call_appears_with_its_name():
    text = (
        "<|tool_calls|><|tool_call:begin|>call_0<|tool_call:name|>get_weather"
        '<|tool_call:args|>{"city": "Pa'
    )
    (call,) = FORMAT.parse(text, partial=True).calls
    assert (call.name, call.arguments, call.complete) == ("get_weather", '{"city": "Pa', False)
    assert FORMAT.parse("<|tool_calls|><|tool_call:begin|>call_0<|tool", partial=True).calls == ()
    assert FORMAT.parse("Hi <|tool_c", partial=True).content == "Hi "


@pytest.mark.parametrize(
    "text",
    [
        '<|tool_calls|><|tool_call:begin|>c<|tool_call:name|>f<|tool_call:args|>{"a": ',
        "<|tool_calls|><|tool_call:begin|>c<|tool_call:name|>f<|tool_call:args|>[1]"
        "<|tool_call:end|><|calls|>",
        "<|tool_calls|>f(1)<|calls|>",
    ],
)
def test_malformed_calls(text):
    check_malformed(FORMAT, text)


def _call(name: str, arguments: str, index: int) -> str:
    return (
        f"<|tool_call:begin|>call_{index}<|tool_call:name|>{name}<|tool_call:args|>"
        f"{arguments}<|tool_call:end|>"
    )


def _section(*calls: str) -> str:
    return "<|tool_calls|>" + "".join(calls) + "<|calls|>"


def test_grammar(check_call_grammar):
    check_call_grammar(
        FORMAT,
        _call("get_weather", WEATHER_ARGUMENTS, 0),
        _call("search", SEARCH_ARGUMENTS, 1),
        section=_section,
        refused=[_section(_call("get_weather", '{"city": "Paris", "days": "3"}', 0))],
    )
