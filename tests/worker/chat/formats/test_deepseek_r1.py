# ruff: noqa: RUF001 (DeepSeek's tokens are written with full-width bars)
"""DeepSeek R1 tool calls: which templates write them, reading what the R1 distills'
templates render for a turn with calls (whole and as it streams), the spellings the distills
use, malformed calls, the grammar."""

from __future__ import annotations

import json

import pytest

from llorch.worker.chat.formats.deepseek_r1 import FORMAT

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

TEMPLATES = {
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
    "llama-cpp-deepseek-r1",
}
CALL = (
    "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
    '{"city": "Paris"}\n```<｜tool▁call▁end｜>'
)


def test_detected_for_its_templates_only(templates_dir):
    assert detected(templates_dir, FORMAT) == TEMPLATES


@pytest.mark.parametrize(
    ("name", "as_text"),
    [
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", False),
        # This template joins the arguments into the text: they must be JSON text already.
        ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B", True),
    ],
)
def test_reads_what_the_template_renders(template, rendered_reply, stream_parse, name, as_text):
    calls = [
        {"name": "get_weather", "arguments": json.dumps(WEATHER) if as_text else WEATHER},
        {"name": "search", "arguments": json.dumps(SEARCH) if as_text else SEARCH},
    ]
    reply = rendered_reply(template(name), calls, None, "<｜Assistant｜>")
    reply = reply.split("<｜end▁of▁sentence｜>")[0]
    parsed = stream_parse(FORMAT, reply)
    assert parsed.content == ""
    assert calls_of(parsed) == READ_BACK


@pytest.mark.parametrize(
    "opening",
    [
        "<｜tool▁calls▁begin｜>",
        "<｜tool_calls_begin｜>",
        "<｜tool calls begin｜>",
        "<｜tool\\_calls\\_begin｜>",
        "<｜tool▁calls｜>",
        "",
    ],
)
def test_spellings_of_the_section(stream_parse, opening):
    parsed = stream_parse(FORMAT, f"Sure.\n\n{opening}{CALL}<｜tool▁calls▁end｜>")
    assert parsed.content == "Sure.\n\n"
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", '{"city": "Paris"}')]


def test_output_may_end_after_the_arguments():
    text = "<｜tool▁calls▁begin｜>" + CALL.split("\n```<")[0]
    (call,) = FORMAT.parse(text, partial=False).calls
    assert call.arguments == '{"city": "Paris"}'


@pytest.mark.parametrize(
    "text",
    [
        "<｜tool▁calls▁begin｜>" + CALL.replace('"Paris"}', '"Paris"'),
        "<｜tool▁calls▁begin｜>" + CALL.replace('{"city": "Paris"}', '["Paris"]'),
        "<｜tool▁calls▁begin｜>" + CALL + " and then some text",
        "<｜tool▁calls▁begin｜>get_weather",
    ],
)
def test_malformed_calls(text):
    check_malformed(FORMAT, text)


def _call(name: str, arguments: str) -> str:
    return (
        f"<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n{arguments}\n```"
        "<｜tool▁call▁end｜>"
    )


def _section(*calls: str) -> str:
    return "<｜tool▁calls▁begin｜>" + "\n".join(calls) + "<｜tool▁calls▁end｜>"


WEATHER_CALL = _call("get_weather", WEATHER_ARGUMENTS)
SEARCH_CALL = _call("search", SEARCH_ARGUMENTS)


def test_grammar(check_call_grammar):
    check_call_grammar(
        FORMAT,
        WEATHER_CALL,
        SEARCH_CALL,
        section=_section,
        refused=[
            _section(WEATHER_CALL.replace("celsius", "kelvin")),
            _section(_call("get_weather", '{"days": 3}')),
        ],
    )
