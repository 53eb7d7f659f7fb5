# ruff: noqa: RUF001 (DeepSeek's DSML token is written with full-width bars)
"""DeepSeek V3.2 and V4 tool calls (DSML markup): detection, reading what their templates
render for a turn with calls (whole and as it streams), string and JSON parameters, malformed
calls, the grammar."""

from __future__ import annotations

import pytest

from llorch.worker.chat.formats.deepseek_v4 import FORMAT as V4
from llorch.worker.chat.formats.deepseek_v32 import FORMAT as V32

from .family_checks import CALLS, READ_BACK, calls_of, check_malformed, detected

D = "｜DSML｜"


def test_detected_for_their_templates_only(templates_dir):
    assert detected(templates_dir, V32) == {"deepseek-ai-DeepSeek-V3.2"}
    assert detected(templates_dir, V4) == {
        "deepseek-ai-DeepSeek-V4",
        "deepseek-ai-DeepSeek-V4-Flash-0731",
    }


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        (V32, "deepseek-ai-DeepSeek-V3.2"),
        (V4, "deepseek-ai-DeepSeek-V4"),
        (V4, "deepseek-ai-DeepSeek-V4-Flash-0731"),
    ],
)
def test_reads_what_the_template_renders(template, rendered_reply, stream_parse, fmt, name):
    reply = rendered_reply(template(name), CALLS, "I will check.", "<｜Assistant｜>")
    reply = reply.split("</think>")[-1].split("<｜end▁of▁sentence｜>")[0]
    parsed = stream_parse(fmt, reply)
    assert parsed.content == "I will check."
    assert calls_of(parsed) == READ_BACK


def test_string_parameters_stay_strings():
    # string="true": the text as written, even when it reads as a number; string="false": JSON.
    text = (
        f'<{D}tool_calls>\n<{D}invoke name="f">\n'
        f'<{D}parameter name="code" string="true">007</{D}parameter>\n'
        f'<{D}parameter name="n" string="false">7</{D}parameter>\n'
        f"</{D}invoke>\n</{D}tool_calls>"
    )
    (call,) = V32.parse(text, partial=False).calls
    assert call.arguments == '{"code": "007", "n": 7}'


def test_partial_arguments_are_the_completed_parameters():
    text = (
        f'<{D}function_calls>\n<{D}invoke name="f">\n'
        f'<{D}parameter name="a" string="false">1</{D}parameter>\n<{D}param'
    )
    (call,) = V4.parse(text, partial=True).calls
    assert (call.name, call.arguments, call.complete) == ("f", '{"a": 1', False)
    assert V4.parse(f'<{D}function_calls>\n<{D}invoke name="f', partial=True).calls == ()
    assert V4.parse("Hi <｜DSML｜tool_", partial=True).content == "Hi"


@pytest.mark.parametrize(
    "text",
    [
        f'<{D}tool_calls>\n<{D}invoke name="f">\n<{D}parameter name="a" string="true">1',
        f'<{D}tool_calls>\n<{D}invoke name="f">\n</{D}tool_calls>',
        f'<{D}tool_calls>\n{{"name": "f"}}\n</{D}tool_calls>',
    ],
)
def test_malformed_calls(text):
    check_malformed(V4, text)


WEATHER_INVOKE = (
    f'<{D}invoke name="get_weather">\n'
    f'<{D}parameter name="city" string="true">Paris</{D}parameter>\n'
    f'<{D}parameter name="unit" string="true">celsius</{D}parameter>\n'
    f'<{D}parameter name="days" string="false">3</{D}parameter>\n'
    f"</{D}invoke>\n"
)
SEARCH_INVOKE = (
    f'<{D}invoke name="search">\n'
    f'<{D}parameter name="query" string="true">x y</{D}parameter>\n'
    f'<{D}parameter name="filters" string="false">{{"site": "a.org", "tags": ["a"]}}'
    f"</{D}parameter>\n</{D}invoke>\n"
)


@pytest.mark.parametrize(("fmt", "block"), [(V32, "function_calls"), (V4, "tool_calls")])
def test_grammar(check_call_grammar, fmt, block):
    def section(*invokes: str) -> str:
        return f"<{D}{block}>\n" + "".join(invokes) + f"</{D}{block}>"

    check_call_grammar(
        fmt,
        WEATHER_INVOKE,
        SEARCH_INVOKE,
        section=section,
        refused=[
            section(WEATHER_INVOKE.replace("celsius", "kelvin")),
            section(WEATHER_INVOKE.replace(">3<", ">three<")),
            # An integer must be marked as JSON, as llama.cpp's parser forces it.
            section(WEATHER_INVOKE.replace('"days" string="false"', '"days" string="true"')),
        ],
    )
