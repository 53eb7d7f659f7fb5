"""LFM2 / LFM2.5 tool calls (Python calls in a list): detection, reading what LFM2.5's template
renders for a turn with calls (whole and as it streams), Python and JSON values, malformed
calls, the grammar."""

from __future__ import annotations

import pytest

from llorch.worker.chat.formats.lfm2 import FORMAT

from .family_checks import (
    CALLS,
    READ_BACK,
    SEARCH_ARGUMENTS,
    WEATHER_ARGUMENTS,
    calls_of,
    check_malformed,
    detected,
)


def test_detected_for_its_templates_only(templates_dir):
    assert detected(templates_dir, FORMAT) == {"LFM2-8B-A1B", "LFM2.5-8B-A1B", "LFM2.5-Instruct"}


def test_reads_what_the_template_renders(template, rendered_reply, stream_parse):
    # The template marks the assistant's turn with {% generation %}, which the conftest's
    # plain jinja2 does not know (the worker's renderer does); it changes no text.
    source = template("LFM2.5-8B-A1B")
    source = source.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    source = source.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    reply = rendered_reply(source, CALLS, "I will check.", "<|im_start|>assistant\n")
    reply = reply.split("<|im_end|>")[0]
    assert "<|tool_call_start|>[get_weather(city='Paris'" in reply
    parsed = stream_parse(FORMAT, reply)
    assert parsed.content == "I will check."
    assert calls_of(parsed) == READ_BACK


def test_python_and_json_values():
    text = (
        "<|tool_call_start|>[f(a='it\\'s', b=True, c=None, d=[1, 'x'], e={\"k\": null}, "
        "g=-2.5, h=false), g()]<|tool_call_end|>"
    )
    first, second = FORMAT.parse(text, partial=False).calls
    assert first.arguments == (
        '{"a": "it\'s", "b": true, "c": null, "d": [1, "x"], "e": {"k": null}, '
        '"g": -2.5, "h": false}'
    )
    assert (second.name, second.arguments) == ("g", "{}")


def test_partial_arguments_are_the_completed_arguments():
    text = "<|tool_call_start|>[f(a=1, b='x, y', c='Pa"
    (call,) = FORMAT.parse(text, partial=True).calls
    assert (call.name, call.arguments, call.complete) == ("f", '{"a": 1, "b": "x, y"', False)
    assert FORMAT.parse("<|tool_call_start|>[get_", partial=True).calls == ()
    assert FORMAT.parse("Hi <|tool_call", partial=True).content == "Hi"


@pytest.mark.parametrize(
    "text",
    [
        "<|tool_call_start|>[f(a=1",
        "<|tool_call_start|>[f(a=os.system('x'))]<|tool_call_end|>",
        '<|tool_call_start|>{"name": "f"}<|tool_call_end|>',
        "<|tool_call_start|>[f(1)]<|tool_call_end|>",
    ],
)
def test_malformed_calls(text):
    check_malformed(FORMAT, text)


def _call(name: str, arguments: str) -> str:
    import json

    pairs = ", ".join(f"{k}={json.dumps(v)}" for k, v in json.loads(arguments).items())
    return f"{name}({pairs})"


def _section(*calls: str) -> str:
    return "<|tool_call_start|>[" + ", ".join(calls) + "]<|tool_call_end|>"


def test_grammar(check_call_grammar):
    weather = _call("get_weather", WEATHER_ARGUMENTS)
    assert weather == 'get_weather(city="Paris", unit="celsius", days=3)'
    check_call_grammar(
        FORMAT,
        weather,
        _call("search", SEARCH_ARGUMENTS),
        section=_section,
        refused=[
            _section(weather.replace("celsius", "kelvin")),
            _section(weather.replace("days=3", 'days="3"')),
            _section('get_weather(unit="celsius")'),  # city is required
        ],
    )
