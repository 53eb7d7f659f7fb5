"""GLM 4.5-4.7 tool calls: which templates write them, reading what GLM 4.6's and 4.7's
templates render for a turn with calls (whole and as it streams), malformed calls, the
grammar."""

from __future__ import annotations

import json

import pytest

from llorch.worker.chat.formats.glm45 import FORMAT

from .family_checks import CALLS, READ_BACK, calls_of, check_malformed, detected

# Ling 3.0, Laguna and Spark 2.5 write GLM's <arg_key>/<arg_value> calls too.
TEMPLATES = {
    "GLM-4.6",
    "GLM-4.7-Flash",
    "inclusionai-ling-3.0-flash",
    "poolside-Laguna-S-2.1",
    "poolside-Laguna-XS-2.1",
    "poolside-Laguna-XS.2",
    "Spark2.5",
}


def test_detected_for_its_templates_only(templates_dir):
    assert detected(templates_dir, FORMAT) == TEMPLATES


@pytest.mark.parametrize("name", ["GLM-4.6", "GLM-4.7-Flash"])
def test_reads_what_the_template_renders(template, rendered_reply, stream_parse, name):
    reply = rendered_reply(template(name), CALLS, "I will check.", "<|assistant|>")
    reply = reply.split("</think>")[-1]  # thinking is taken out before the format sees it
    parsed = stream_parse(FORMAT, reply)
    assert parsed.content.strip() == "I will check."
    assert calls_of(parsed) == READ_BACK


def test_call_without_arguments_and_typed_values(stream_parse):
    text = (
        "<tool_call>now</tool_call>\n<tool_call>f\n<arg_key>n</arg_key>\n<arg_value>1.5"
        "</arg_value>\n<arg_key>s</arg_key>\n<arg_value> spaced </arg_value>\n</tool_call>"
    )
    now, f = stream_parse(FORMAT, text).calls
    assert (now.name, now.arguments) == ("now", "{}")
    assert json.loads(f.arguments) == {"n": 1.5, "s": " spaced "}


def test_partial_arguments_are_the_completed_parameters():
    text = "<tool_call>f<arg_key>a</arg_key><arg_value>1</arg_value><arg_key>b</arg_key><arg_v"
    (call,) = FORMAT.parse(text, partial=True).calls
    assert (call.name, call.arguments, call.complete) == ("f", '{"a": 1', False)
    assert FORMAT.parse("<tool_call>get_wea", partial=True).calls == ()


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>1",
        "<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>1</arg_value>\n",
        "<tool_call>f\n<arg_value>1</arg_value></tool_call>",
        "<tool_call>\n</tool_call>",
    ],
)
def test_malformed_calls(text):
    check_malformed(FORMAT, text)


FIRST = (
    "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
    "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>"
)
SECOND = (
    "<tool_call>search<arg_key>query</arg_key><arg_value>x y</arg_value>"
    '<arg_key>filters</arg_key><arg_value>{"site": "a.org", "tags": ["a", "b"]}</arg_value>'
    "</tool_call>"
)


def test_grammar(check_call_grammar):
    check_call_grammar(
        FORMAT,
        FIRST,
        SECOND,
        joiner="\n",
        refused=[
            FIRST.replace(">3<", ">three<"),
            FIRST.replace("<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n", ""),
            SECOND.replace('"site": "a.org", ', ""),
        ],
    )
