"""Gemma 4 tool calls: detection, reading what its template renders for a turn with calls
(whole and as it streams), Gemma's argument notation, thinking, malformed calls, the
grammar."""

from __future__ import annotations

import json

import pytest

from llorch.worker.chat.formats.gemma4 import FORMAT

from .family_checks import CALLS, READ_BACK, calls_of, check_malformed, detected

TEMPLATES = {"google-gemma-4-31B-it", "google-gemma-4-31B-it-interleaved"}


def test_detected_for_its_templates_only(templates_dir):
    assert detected(templates_dir, FORMAT) == TEMPLATES


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_reads_what_the_template_renders(template, rendered_reply, stream_parse, name):
    reply = rendered_reply(template(name), CALLS, "", "<|turn>model\n")
    # The template opens the tool responses right after the calls (or ends the turn).
    reply = reply.split("<|tool_response>")[0].split("<turn|>")[0]
    parsed = stream_parse(FORMAT, reply)
    assert parsed.content == ""
    assert calls_of(parsed) == READ_BACK


def test_notation(stream_parse):
    text = (
        '<|tool_call>call:f{text:<|"|>say "hi"\n\\ {a:b}<|"|>,n:-1.5e3,yes:true,no:false,'
        'none:null,empty:[],nested:{list:[1,{k:<|"|>v<|"|>}]}, spaced: 2}<tool_call|>'
    )
    (call,) = stream_parse(FORMAT, text).calls
    assert json.loads(call.arguments) == {
        "text": 'say "hi"\n\\ {a:b}',
        "n": -1500.0,
        "yes": True,
        "no": False,
        "none": None,
        "empty": [],
        "nested": {"list": [1, {"k": "v"}]},
        "spaced": 2,
    }


def test_thinking_is_the_reasoning(stream_parse):
    text = (
        "<|channel>thought\nThe user wants weather.<channel|>Sure."
        '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
    )
    parsed = stream_parse(FORMAT, text)
    assert (parsed.reasoning, parsed.content) == ("The user wants weather.", "Sure.")
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", '{"city":"Paris"}')]
    # A stray end of channel is not content.
    assert FORMAT.parse("Hello.<channel|>", partial=False).content == "Hello."


@pytest.mark.parametrize(
    "text",
    [
        "<|tool_call>call:f{a:1",
        "<|tool_call>call:f{a:yes}<tool_call|>",
        "<|tool_call>f{a:1}<tool_call|>",
        "<|tool_call>call:f{a:1}and more",
    ],
)
def test_malformed_calls(text):
    check_malformed(FORMAT, text)


FIRST = (
    '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3,unit:<|"|>celsius<|"|>}<tool_call|>'
)
SECOND = (
    '<|tool_call>call:search{filters:{site:<|"|>a.org<|"|>,tags:[<|"|>a<|"|>]},'
    'query:<|"|>x y<|"|>}<tool_call|>'
)


def test_grammar(check_call_grammar):
    check_call_grammar(
        FORMAT,
        FIRST,
        SECOND,
        refused=[
            FIRST.replace("days:3", 'days:<|"|>3<|"|>'),  # an integer
            FIRST.replace("celsius", "kelvin"),  # an enum
            FIRST.replace('city:<|"|>Paris<|"|>,', ""),  # required
            FIRST.replace('city:<|"|>Paris<|"|>,days:3', 'days:3,city:<|"|>Paris<|"|>'),  # order
            SECOND.replace('site:<|"|>a.org<|"|>,', ""),  # nested required
        ],
    )
