"""Qwen3-Coder / Qwen 3.5 tool calls: which templates write them, reading what those templates
render for a turn with calls (whole and as it streams), malformed calls, the grammar."""

from __future__ import annotations

import json

import pytest

from llorch.worker.chat.formats.base import MalformedCall
from llorch.worker.chat.formats.qwen3_coder import FORMAT

from .family_checks import CALLS, READ_BACK, calls_of, check_malformed, detected

# The templates of this syntax in llama.cpp's collection (Nemotron 3 Nano and StepFun 3.5
# write it too: llama.cpp reads them with the same parser).
TEMPLATES = {
    "Qwen3-Coder",
    "Qwen3.5-4B",
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
    "StepFun3.5-Flash",
}


def test_detected_for_its_templates_only(templates_dir):
    assert detected(templates_dir, FORMAT) == TEMPLATES


@pytest.mark.parametrize("name", ["Qwen3-Coder", "Qwen3.5-4B"])
def test_reads_what_the_template_renders(template, rendered_reply, stream_parse, name):
    reply = rendered_reply(template(name), CALLS, "I will check.", "<|im_start|>assistant\n")
    # Qwen 3.5's thinking is taken out before the format sees the output; <|im_end|> ends it.
    reply = reply.split("</think>")[-1].split("<|im_end|>")[0]
    parsed = stream_parse(FORMAT, reply)
    assert parsed.content.strip() == "I will check."
    assert calls_of(parsed) == READ_BACK
    assert all(call.complete for call in parsed.calls)


def test_values_become_json_by_their_text(stream_parse):
    values = {
        "count": "42",
        "ratio": "-0.5",
        "flag": "true",
        "nothing": "null",
        "list": '[1, "two"]',
        "object": '{"a": {"b": []}}',
        "text": "line one\nline two",
        "quoted": '"kept as written"',
        "not_json": "NaN",
        "code": "if a < b:\n    print('<tag>')",
    }
    params = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in values.items())
    text = f"<tool_call>\n<function=f>\n{params}</function>\n</tool_call>"
    (call,) = stream_parse(FORMAT, text).calls
    assert json.loads(call.arguments) == {
        "count": 42,
        "ratio": -0.5,
        "flag": True,
        "nothing": None,
        "list": [1, "two"],
        "object": {"a": {"b": []}},
        "text": "line one\nline two",
        "quoted": '"kept as written"',
        "not_json": "NaN",
        "code": "if a < b:\n    print('<tag>')",
    }


def test_partial_arguments_are_the_completed_parameters():
    text = "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n<parameter=b>\nhal"
    (call,) = FORMAT.parse(text, partial=True).calls
    assert (call.name, call.arguments, call.complete) == ("f", '{"a": 1', False)
    (call,) = FORMAT.parse("<tool_call>\n<function=f>\n", partial=True).calls
    assert call.arguments == "{"
    assert FORMAT.parse("<tool_call>\n<function=f", partial=True).calls == ()


def test_call_without_parameters_and_missing_close():
    (call,) = FORMAT.parse("<tool_call>\n<function=now>\n</function>\n", partial=False).calls
    assert (call.name, call.arguments) == ("now", "{}")


def test_text_without_calls_is_content():
    text = "5 < 6 and <b>bold</b>."
    assert FORMAT.parse(text, partial=False).content == text
    assert FORMAT.parse("Hello <tool_", partial=True).content == "Hello "
    # A <tool_call> tag in prose starts a call that does not follow: the final parse refuses
    # it (the core then keeps the whole output as content).
    with pytest.raises(MalformedCall):
        FORMAT.parse("Use <tool_call> tags.", partial=False)


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n",
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n",
        '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
        "<tool_call>\n<function=f>\n</function>\nand more text",
    ],
)
def test_malformed_calls(text):
    check_malformed(FORMAT, text)


FIRST = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=unit>\ncelsius\n</parameter>\n<parameter=days>\n3\n</parameter>\n"
    "</function>\n</tool_call>"
)
SECOND = (
    "<tool_call>\n<function=search>\n<parameter=query>\nx y\n</parameter>\n"
    '<parameter=filters>\n{"site": "a.org", "tags": ["a", "b"]}\n</parameter>\n'
    "</function>\n</tool_call>"
)


def test_grammar(check_call_grammar):
    check_call_grammar(
        FORMAT,
        FIRST,
        SECOND,
        joiner="\n",
        refused=[
            FIRST.replace("\n3\n", "\nthree\n"),  # days is an integer
            FIRST.replace("celsius", "kelvin"),  # unit is an enum
            FIRST.replace("<parameter=city>\nParis\n</parameter>\n", ""),  # city is required
            SECOND.replace('"site": "a.org", ', ""),  # filters.site is required
        ],
    )
