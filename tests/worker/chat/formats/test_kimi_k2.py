"""Kimi K2 tool calls: detection, reading what its templates render for a turn with calls
(whole and as it streams; the call ids), malformed calls, the grammar."""

from __future__ import annotations

import json

import pytest

from llorch.worker.chat.formats.kimi_k2 import FORMAT

from .family_checks import CALLS, SEARCH, WEATHER, WEATHER_ARGUMENTS, check_malformed, detected

TEMPLATES = {"Kimi-K2-Instruct", "Kimi-K2-Thinking", "moonshotai-Kimi-K2"}


def test_detected_for_its_templates_only(templates_dir):
    assert detected(templates_dir, FORMAT) == TEMPLATES


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_reads_what_the_template_renders(template, rendered_reply, stream_parse, name):
    reply = rendered_reply(template(name), CALLS, "I will check.", "<|im_middle|>")
    # Kimi K2 Thinking's thinking is taken out before the format sees the output.
    reply = reply.split("</think>")[-1].split("<|im_end|>")[0]
    parsed = stream_parse(FORMAT, reply)
    assert parsed.content == "I will check."
    assert [(c.name, c.id, json.loads(c.arguments)) for c in parsed.calls] == [
        ("get_weather", "functions.get_weather:0", WEATHER),
        ("search", "functions.search:1", SEARCH),
    ]


def test_call_without_the_section_tokens():
    text = '<|tool_call_begin|>functions.a.b:7<|tool_call_argument_begin|>{"x": 1}'
    (call,) = FORMAT.parse(text, partial=False).calls
    assert (call.name, call.id, call.arguments) == ("a.b", "functions.a.b:7", '{"x": 1}')


def test_partial_call_appears_with_its_id():
    text = (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:2<|tool_call_argument_begin|>{"
    )
    (call,) = FORMAT.parse(text, partial=True).calls
    assert (call.name, call.id, call.arguments, call.complete) == ("f", "functions.f:2", "{", False)
    assert FORMAT.parse("Hi<|tool_calls_sec", partial=True) == FORMAT.parse("Hi", partial=True)


@pytest.mark.parametrize(
    "text",
    [
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_end|>",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0"
        "<|tool_call_argument_begin|>[]<|tool_call_end|><|tool_calls_section_end|>",
    ],
)
def test_malformed_calls(text):
    check_malformed(FORMAT, text)


def _call(name: str, index: int, arguments: str) -> str:
    return (
        f"<|tool_call_begin|>functions.{name}:{index}<|tool_call_argument_begin|>{arguments}"
        "<|tool_call_end|>"
    )


def _section(*calls: str) -> str:
    return "<|tool_calls_section_begin|>" + "".join(calls) + "<|tool_calls_section_end|>"


WEATHER_CALL = _call("get_weather", 0, WEATHER_ARGUMENTS)
SEARCH_CALL = _call("search", 12, '{"query": "x y", "filters": {"site": "a.org", "tags": []}}')


def test_grammar(check_call_grammar):
    check_call_grammar(
        FORMAT,
        WEATHER_CALL,
        SEARCH_CALL,
        section=_section,
        refused=[
            _section(WEATHER_CALL.replace(":0", "")),
            _section(_call("get_weather", 0, '{"unit": "celsius"}')),
        ],
    )
