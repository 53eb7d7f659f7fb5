"""Seed-OSS tool calls: detection, reading what its template renders for a turn with calls
(whole and as it streams), malformed calls, the grammar."""

from __future__ import annotations

import pytest

from llorch.worker.chat.formats.seed_oss import FORMAT

from .family_checks import CALLS, READ_BACK, calls_of, check_malformed, detected


def test_detected_for_its_template_only(templates_dir):
    assert detected(templates_dir, FORMAT) == {"ByteDance-Seed-OSS"}


def test_reads_what_the_template_renders(template, rendered_reply, stream_parse):
    reply = rendered_reply(
        template("ByteDance-Seed-OSS"), CALLS, "I will check.", "<seed:bos>assistant\n"
    )
    reply = reply.split("<seed:eos>")[0]
    parsed = stream_parse(FORMAT, reply)
    assert parsed.content.strip() == "I will check."
    assert calls_of(parsed) == READ_BACK


def test_values_as_python_writes_them():
    # The template writes non-string values with Jinja's `string` filter (Python's str).
    text = (
        "<seed:tool_call>\n<function=f>\n<parameter=a>True</parameter>\n"
        "<parameter=b>{'x': [1, None]}</parameter>\n<parameter=c>Tokyo</parameter>\n"
        "<parameter=d>{not python</parameter>\n</function>\n</seed:tool_call>"
    )
    (call,) = FORMAT.parse(text, partial=False).calls
    assert call.arguments == '{"a": true, "b": {"x": [1, null]}, "c": "Tokyo", "d": "{not python"}'


def test_partial_arguments_are_the_completed_parameters():
    text = "<seed:tool_call>\n<function=f>\n<parameter=a>1</parameter>\n<param"
    (call,) = FORMAT.parse(text, partial=True).calls
    assert (call.name, call.arguments, call.complete) == ("f", '{"a": 1', False)
    assert FORMAT.parse("<seed:tool_call>\n<function=f", partial=True).calls == ()
    assert FORMAT.parse("Hi <seed:tool", partial=True).content == "Hi "


@pytest.mark.parametrize(
    "text",
    [
        "<seed:tool_call>\n<function=f>\n<parameter=a>1",
        "<seed:tool_call>\n<function=f>\n</seed:tool_call>",
        '<seed:tool_call>\n{"name": "f"}\n</seed:tool_call>',
    ],
)
def test_malformed_calls(text):
    check_malformed(FORMAT, text)


WEATHER_CALL = (
    "<seed:tool_call>\n<function=get_weather>\n<parameter=city>Paris</parameter>\n"
    "<parameter=unit>celsius</parameter>\n<parameter=days>3</parameter>\n</function>\n"
    "</seed:tool_call>"
)
SEARCH_CALL = (
    "<seed:tool_call>\n<function=search>\n<parameter=query>x y</parameter>\n"
    '<parameter=filters>{"site": "a.org", "tags": ["a"]}</parameter>\n</function>\n'
    "</seed:tool_call>"
)


def test_grammar(check_call_grammar):
    check_call_grammar(
        FORMAT,
        WEATHER_CALL,
        SEARCH_CALL,
        joiner="\n",
        refused=[
            WEATHER_CALL.replace("celsius", "kelvin"),
            WEATHER_CALL.replace(">3<", ">three<"),
        ],
    )
