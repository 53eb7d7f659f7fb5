"""gpt-oss (harmony) tool calls: detection, reading what its template renders (analysis,
final and call messages, whole and as they stream), the recipient in either header position,
malformed calls, the grammar (forced, and lazy after another message)."""

from __future__ import annotations

import pytest

from llorch.worker.chat.formats.gpt_oss import FORMAT

from .family_checks import (
    SEARCH_ARGUMENTS,
    WEATHER,
    WEATHER_ARGUMENTS,
    calls_of,
    check_malformed,
    detected,
)


def test_detected_for_its_template_only(templates_dir):
    assert detected(templates_dir, FORMAT) == {"openai-gpt-oss-120b"}


def test_reads_what_the_template_renders(template, rendered_reply, stream_parse):
    # The template renders one call per turn, its content as the analysis before it.
    calls = [{"name": "get_weather", "arguments": WEATHER}]
    source = template("openai-gpt-oss-120b")
    reply = rendered_reply(source, calls, "I will check.", "<|start|>assistant")
    assert reply.startswith("<|channel|>analysis<|message|>I will check.<|end|>")
    parsed = stream_parse(FORMAT, reply)
    assert (parsed.reasoning, parsed.content) == ("I will check.", "")
    assert calls_of(parsed) == [("get_weather", WEATHER)]


def test_analysis_then_final_answer(stream_parse):
    text = (
        "<|channel|>analysis<|message|>The user greets.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Hello there!"
    )
    parsed = stream_parse(FORMAT, text)
    assert (parsed.reasoning, parsed.content, parsed.calls) == (
        "The user greets.",
        "Hello there!",
        (),
    )


def test_preamble_and_call_with_the_recipient_in_the_channel(stream_parse):
    text = (
        "<|channel|>analysis<|message|>Need weather.<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>Checking the weather.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city": "Paris"}<|call|>'
    )
    parsed = stream_parse(FORMAT, text)
    assert (parsed.reasoning, parsed.content) == ("Need weather.", "Checking the weather.")
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", '{"city": "Paris"}')]


def test_output_without_channels_is_content():
    assert FORMAT.parse("Just text.", partial=False).content == "Just text."
    assert FORMAT.parse("<|chan", partial=True).content == ""


def test_partial_call_appears_once_its_header_is_read():
    text = " to=functions.get_weather<|channel|>commentary json<|message|>"
    assert FORMAT.parse(text[:-3], partial=True).calls == ()
    (call,) = FORMAT.parse(text + '{"ci', partial=True).calls
    assert (call.name, call.arguments, call.complete) == ("get_weather", '{"ci', False)


@pytest.mark.parametrize(
    "text",
    [
        '<|channel|>commentary to=functions.f json<|message|>{"a": ',
        "<|channel|>commentary to=functions.f json<|message|>[1]",
        "<|channel|>commentary to=functions.f json",
    ],
)
def test_malformed_calls(text):
    check_malformed(FORMAT, text)


FIRST = " to=functions.get_weather<|channel|>commentary json<|message|>" + WEATHER_ARGUMENTS
SECOND = "<|channel|>commentary to=functions.search <|constrain|>json<|message|>" + SEARCH_ARGUMENTS
ANALYSIS = "<|channel|>analysis<|message|>Let me look that up.<|end|><|start|>assistant"


def test_grammar(check_call_grammar, grammar_accepts, schema_tools):
    # One call at most: its <|call|> token ends the generation.
    check_call_grammar(
        FORMAT,
        FIRST,
        SECOND,
        parallel_differs=False,
        lead=ANALYSIS,
        refused=[FIRST.replace('"celsius"', '"kelvin"'), FIRST.replace("commentary", "final")],
    )
    grammar = FORMAT.grammar(schema_tools, parallel=False)
    # Forced: analysis messages and preambles may come first.
    assert grammar_accepts(grammar.gbnf, ANALYSIS + FIRST)
    preamble = "<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant"
    assert grammar_accepts(grammar.gbnf, ANALYSIS + preamble + SECOND)
    assert not grammar_accepts(grammar.gbnf, "<|channel|>final<|message|>Hi")
    # Lazy: a call as the first message triggers it too; a final answer does not.
    assert grammar_accepts(grammar.gbnf, SECOND, triggers=grammar.triggers)
    assert not grammar_accepts(
        grammar.gbnf, SECOND.replace("search", "lookup"), triggers=grammar.triggers
    )
    final = ANALYSIS + "<|channel|>final<|message|>It is sunny."
    assert grammar_accepts(grammar.gbnf, final, triggers=grammar.triggers)
