"""The families whose calls are one JSON array between tags (Nemotron Nano v2's <TOOLCALL>,
Apriel's <tool_calls>): detection, reading what their templates render for a turn with calls
(whole and as it streams), malformed calls, the grammars."""

from __future__ import annotations

import pytest

from llorch.worker.chat.formats.apriel import FORMAT as APRIEL
from llorch.worker.chat.formats.nemotron_v2 import FORMAT as NEMOTRON

from .family_checks import (
    CALLS,
    READ_BACK,
    SEARCH_ARGUMENTS,
    WEATHER_ARGUMENTS,
    calls_of,
    check_malformed,
    detected,
)


def test_detected_for_their_templates_only(templates_dir):
    assert detected(templates_dir, NEMOTRON) == {"NVIDIA-Nemotron-Nano-v2"}
    assert detected(templates_dir, APRIEL) == {
        "unsloth-Apriel-1.5",
        "Apriel-1.6-15b-Thinker-fixed",
    }


@pytest.mark.parametrize(
    ("fmt", "name", "header", "end"),
    [
        (NEMOTRON, "NVIDIA-Nemotron-Nano-v2", "<SPECIAL_11>Assistant\n", "<SPECIAL_12>"),
        (APRIEL, "unsloth-Apriel-1.5", "<|assistant|>\n", "<|end|>"),
        (APRIEL, "Apriel-1.6-15b-Thinker-fixed", "<|begin_assistant|>\n", "<|end|>"),
    ],
)
def test_reads_what_the_template_renders(
    template, rendered_reply, stream_parse, fmt, name, header, end
):
    # With content and calls Nemotron's template renders the content as a turn of its own
    # (<SPECIAL_12> between): the calls come without content here.
    content = None if fmt is NEMOTRON else "I will check."
    reply = rendered_reply(template(name), CALLS, content, header).split(end)[0]
    if fmt is NEMOTRON:
        reply = reply.split(header)[-1]
    parsed = stream_parse(fmt, reply)
    assert parsed.content.strip() == (content or "")
    assert calls_of(parsed) == READ_BACK


def test_ids_are_read():
    text = '<tool_calls>[{"name": "f", "arguments": {"a": 1}, "id": "c1"}]</tool_calls>'
    (call,) = APRIEL.parse(text, partial=False).calls
    assert (call.name, call.arguments, call.id) == ("f", '{"a": 1}', "c1")


def test_partial_call_appears_with_its_name():
    text = '<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Pa'
    (call,) = NEMOTRON.parse(text, partial=True).calls
    assert (call.name, call.arguments, call.complete) == ("get_weather", '{"city": "Pa', False)
    assert NEMOTRON.parse('<TOOLCALL>[{"name": "get_', partial=True).calls == ()
    assert NEMOTRON.parse("Hi <TOOL", partial=True).content == "Hi"


@pytest.mark.parametrize("fmt", [NEMOTRON, APRIEL])
@pytest.mark.parametrize(
    "body",
    ['[{"name": "f", "arguments": {"a": ', '[{"name": "f", "arguments": [1]}]', "f(1)"],
)
def test_malformed_calls(fmt, body):
    check_malformed(fmt, fmt.start + body)


@pytest.mark.parametrize("fmt", [NEMOTRON, APRIEL])
def test_grammar(check_call_grammar, fmt):
    def call(name: str, arguments: str) -> str:
        return f'{{"name": "{name}", "arguments": {arguments}}}'

    def section(*calls: str) -> str:
        return fmt.start + "[" + ", ".join(calls) + "]" + fmt.end

    weather = call("get_weather", WEATHER_ARGUMENTS)
    check_call_grammar(
        fmt,
        weather,
        call("search", SEARCH_ARGUMENTS),
        section=section,
        refused=[section(call("get_weather", '{"city": "Paris", "days": "3"}'))],
    )
