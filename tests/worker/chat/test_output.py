"""The output reader: thinking split off, calls parsed, deltas that only grow and add up to
the final answer, whatever the pieces the tokens cut the text into."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from llorch.worker.chat.formats.base import (
    MalformedCall,
    Parsed,
    ParsedCall,
    ToolGrammar,
    content_before,
    json_value_end,
    partial_arguments,
)
from llorch.worker.chat.output import OutputPlan, OutputReader
from llorch.worker.chat.reasoning import ThinkTags, opened_in_prompt, split, think_tags
from llorch.worker.chat.types import ReasoningDelta, TextDelta, ToolCallDelta

THINK = ThinkTags("<think>", "</think>")


@dataclass(frozen=True)
class TaggedJson:
    """A minimal format for these tests: `<call>{"name": N, "arguments": {...}}</call>`."""

    name: str = "tagged"
    markers: tuple[str, ...] = ("<call>", "</call>")

    def matches(self, template: str) -> bool:
        return "<call>" in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        content, at = content_before(text, ["<call>"], partial=partial)
        calls = []
        while at < len(text):
            start = text.find("<call>", at)
            if start < 0:
                break
            body = start + len("<call>")
            end = json_value_end(text, body)
            if end is None:
                if not partial:
                    raise MalformedCall("unfinished call")
                raw = text[body:]
                key = raw.find('"arguments":')
                name_end = raw.find('",')
                if key >= 0 and name_end >= 0:
                    name = json.loads(raw[raw.find(":") + 1 : name_end + 1])
                    calls.append(
                        ParsedCall(
                            name, partial_arguments(raw[key + 12 :].lstrip()), complete=False
                        )
                    )
                break
            value = json.loads(text[body:end])
            raw = text[body:end]
            args = raw[raw.find('"arguments":') + 12 : raw.rfind("}")].strip()
            calls.append(ParsedCall(value["name"], args))
            at = end + len("</call>")
        return Parsed(content.rstrip() if calls else content, tuple(calls))

    def grammar(self, tools, *, parallel):  # type: ignore[no-untyped-def]
        return ToolGrammar('root ::= "<call>"', ("<call>",))


def run(reader: OutputReader, text: str, step: int = 1) -> list:
    deltas = []
    for i in range(0, len(text), step):
        deltas += reader.feed(text[i : i + step])
    final, calls = reader.finish()
    return [*deltas, *final], calls


def joined(deltas: list, kind: type) -> str:
    return "".join(d.text for d in deltas if isinstance(d, kind))


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_thinking_content_and_calls_add_up_whatever_the_pieces(step):
    text = (
        "<think>\nI should look it up.\n</think>\n\nLet me check. "
        '<call>{"name": "weather", "arguments": {"city": "Paris", "days": 2}}</call>'
    )
    reader = OutputReader(OutputPlan(tool_format=TaggedJson(), think=THINK))
    deltas, calls = run(reader, text, step)
    assert joined(deltas, ReasoningDelta) == "I should look it up."
    assert joined(deltas, TextDelta) == "Let me check."
    starts = [d for d in deltas if isinstance(d, ToolCallDelta) and d.id]
    assert [(d.index, d.name) for d in starts] == [(0, "weather")]
    arguments = "".join(d.arguments for d in deltas if isinstance(d, ToolCallDelta))
    assert json.loads(arguments) == {"city": "Paris", "days": 2}
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("weather", {"city": "Paris", "days": 2})
    ]
    assert calls[0].id == starts[0].id and calls[0].id.startswith("call_")


def test_markup_never_reaches_the_content_while_streaming():
    reader = OutputReader(OutputPlan(tool_format=TaggedJson()))
    seen = ""
    for c in 'Sure <call>{"name": "f", "arguments": {}}</call>':
        for d in reader.feed(c):
            if isinstance(d, TextDelta):
                seen += d.text
        assert "<" not in seen
    assert seen == "Sure"


def test_a_malformed_call_comes_back_as_content():
    text = 'Here <call>{"name": "f", "arguments": {"a": '
    reader = OutputReader(OutputPlan(tool_format=TaggedJson()))
    deltas, calls = run(reader, text)
    assert calls == ()
    assert joined(deltas, TextDelta) == text


def test_without_a_format_everything_is_content():
    reader = OutputReader(OutputPlan())
    deltas, calls = run(reader, "<call>{}</call> <think>x</think>")
    assert joined(deltas, TextDelta) == "<call>{}</call> <think>x</think>" and calls == ()


def test_parallel_calls_off_keeps_the_first():
    text = '<call>{"name": "a", "arguments": {}}</call><call>{"name": "b", "arguments": {}}</call>'
    reader = OutputReader(OutputPlan(tool_format=TaggedJson(), max_calls=1))
    _, calls = run(reader, text)
    assert [c.name for c in calls] == ["a"]


def test_thinking_opened_by_the_prompt():
    assert opened_in_prompt("<|im_start|>assistant\n<think>\n", THINK)
    assert not opened_in_prompt("<|im_start|>assistant\n<think>\n\n</think>\n\n", THINK)
    reader = OutputReader(OutputPlan(think=THINK, thinking_started=True))
    deltas, _ = run(reader, "Hmm, two.\n</think>\n\nThe answer is 2.")
    assert joined(deltas, ReasoningDelta) == "Hmm, two."
    assert joined(deltas, TextDelta) == "The answer is 2."


def test_split_holds_back_what_may_be_a_tag():
    assert split("<thi", THINK, started=False, partial=True).rest == ""
    assert split("Hello", THINK, started=False, partial=True).rest == "Hello"
    cut = split("<think>abc </th", THINK, started=False, partial=True)
    assert (cut.reasoning, cut.rest, cut.thinking) == ("abc", "", True)
    cut = split("abc", THINK, started=True, partial=False)  # cut off while thinking
    assert (cut.reasoning, cut.rest) == ("abc", "")


def test_think_tags_from_the_template():
    assert think_tags("{{ '<think>' }}...{{ '</think>' }}") == THINK
    assert think_tags("[THINK]x[/THINK]") == ThinkTags("[THINK]", "[/THINK]")
    assert think_tags("{{ messages }}") is None


def test_a_call_cut_by_the_token_limit_leaves_the_complete_ones():
    text = '<call>{"name": "a", "arguments": {"x": 1}}</call><call>{"name": "b", "argu'
    cut = OutputReader(OutputPlan(tool_format=TaggedJson()))
    cut.feed(text)
    _, calls = cut.finish(cut=True)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("a", {"x": 1})]
    # Not cut (the model ended it there): malformed, so all of it is content.
    ended = OutputReader(OutputPlan(tool_format=TaggedJson()))
    deltas = ended.feed(text)
    final, calls = ended.finish()
    assert calls == ()
    assert joined([*deltas, *final], TextDelta) == text


@pytest.mark.parametrize("started", [False, True])
def test_the_reader_knows_when_a_piece_is_inside_the_thinking_block(started):
    # Usage counts a token as thinking when it was fed inside the block: the block's text and
    # its closing tag, not the whitespace after it that the answer drops.
    reader = OutputReader(OutputPlan(think=THINK, thinking_started=started))
    pieces = ([] if started else ["<think>"]) + ["Hmm", " two", "\n", "</think>", "\n\n", "2", "."]
    inside = []
    for piece in pieces:
        inside.append(reader.thinking)
        reader.feed(piece)
    assert inside == ([] if started else [False]) + [True] * 4 + [False] * 3
