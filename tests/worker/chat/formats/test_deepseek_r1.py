# ruff: noqa: RUF001 (DeepSeek's tokens are written with full-width bars)
"""DeepSeek R1 tool calls: which templates write them, reading what the R1 distills'
templates render for a turn with calls (whole and as it streams), the spellings the distills
use, malformed calls, the grammar."""

from __future__ import annotations

import json

import pytest

from llorch.worker.chat.formats import detect
from llorch.worker.chat.formats.base import MalformedCall
from llorch.worker.chat.formats.deepseek_r1 import FORMAT

WEATHER = {"city": "Paris", "days": 3}
SEARCH = {"query": "x y", "filters": {"site": "a.org", "tags": ["a", "b"]}}
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
    found = {
        path.stem
        for path in templates_dir.glob("*.jinja")
        if detect(path.read_text(encoding="utf-8")).name == FORMAT.name
    }
    assert found == TEMPLATES


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
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        ("get_weather", WEATHER),
        ("search", SEARCH),
    ]


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
    FORMAT.parse(text, partial=True)
    with pytest.raises(MalformedCall):
        FORMAT.parse(text, partial=False)


def _call(name: str, arguments: str) -> str:
    return (
        f"<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n{arguments}\n```"
        "<｜tool▁call▁end｜>"
    )


def _section(*calls: str) -> str:
    return "<｜tool▁calls▁begin｜>" + "\n".join(calls) + "<｜tool▁calls▁end｜>"


WEATHER_CALL = _call("get_weather", '{"city": "Paris", "unit": "celsius", "days": 3}')
SEARCH_CALL = _call("search", '{"query": "x y", "filters": {"site": "a.org", "tags": ["a"]}}')


def test_grammar(check_call_grammar, grammar_accepts, schema_tools):
    check_call_grammar(
        FORMAT,
        schema_tools,
        _section(WEATHER_CALL),
        _section(SEARCH_CALL),
        parallel_differs=False,
        refused=[
            _section(WEATHER_CALL.replace("celsius", "kelvin")),
            _section(_call("get_weather", '{"days": 3}')),
        ],
    )
    both = _section(WEATHER_CALL, SEARCH_CALL)
    assert grammar_accepts(FORMAT.grammar(schema_tools, parallel=True).gbnf, both)
    assert not grammar_accepts(FORMAT.grammar(schema_tools, parallel=False).gbnf, both)
    assert [c.name for c in FORMAT.parse(both, partial=False).calls] == ["get_weather", "search"]
