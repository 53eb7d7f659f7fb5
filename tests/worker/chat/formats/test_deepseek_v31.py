# ruff: noqa: RUF001, RUF003 (DeepSeek's tokens are written with full-width bars)
"""DeepSeek V3.1 tool calls: detection (V3.2 is another syntax), reading what its template
renders for a turn with calls (whole and as it streams), malformed calls, the grammar."""

from __future__ import annotations

import pytest

from llorch.worker.chat.formats.deepseek_v31 import FORMAT

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
    # V3.2 and V4 write DSML markup (<｜DSML｜function_calls>), not these tokens.
    assert detected(templates_dir, FORMAT) == {"deepseek-ai-DeepSeek-V3.1"}


def test_reads_what_the_template_renders(template, rendered_reply, stream_parse):
    source = template("deepseek-ai-DeepSeek-V3.1")
    reply = rendered_reply(source, CALLS, "I will check.", "<｜Assistant｜>")
    reply = reply.split("</think>")[-1].split("<｜end▁of▁sentence｜>")[0]
    parsed = stream_parse(FORMAT, reply)
    assert parsed.content == "I will check."
    assert calls_of(parsed) == READ_BACK


def test_partial_call_appears_with_its_name():
    text = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Pa'
    (call,) = FORMAT.parse(text, partial=True).calls
    assert (call.name, call.arguments, call.complete) == ("get_weather", '{"city": "Pa', False)
    assert FORMAT.parse("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_", partial=True).calls == ()


@pytest.mark.parametrize(
    "text",
    [
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{"a": ',
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>[1]<｜tool▁call▁end｜>",
        "<｜tool▁calls▁begin｜>f(1)",
    ],
)
def test_malformed_calls(text):
    check_malformed(FORMAT, text)


def _call(name: str, arguments: str) -> str:
    return f"<｜tool▁call▁begin｜>{name}<｜tool▁sep｜>{arguments}<｜tool▁call▁end｜>"


def _section(*calls: str) -> str:
    return "<｜tool▁calls▁begin｜>" + "".join(calls) + "<｜tool▁calls▁end｜>"


WEATHER_CALL = _call("get_weather", WEATHER_ARGUMENTS)
SEARCH_CALL = _call("search", SEARCH_ARGUMENTS)


def test_grammar(check_call_grammar):
    check_call_grammar(
        FORMAT,
        WEATHER_CALL,
        SEARCH_CALL,
        section=_section,
        refused=[_section(_call("get_weather", '{"city": "Paris", "days": "3"}'))],
    )
