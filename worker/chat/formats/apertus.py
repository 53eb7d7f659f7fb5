"""Apertus (Swiss AI): the calls are one JSON list between tool tokens, each call an object
whose one key is the function's name and whose value is the arguments,

    <|tools_prefix|>[{"get_weather": {"city": "Paris"}}, {"search": {"query": "x"}}]<|tools_suffix|>

(Apertus-8B-Instruct.jinja: `'{"' + function.name + '": ' + function.arguments|tojson + '}'`,
joined by ", ".)
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    MalformedCall,
    Parsed,
    ParsedCall,
    ToolGrammar,
    gbnf_literal,
    json_arguments,
    object_text,
    regex_literal,
    skip_space,
)
from llorch.worker.chat.formats.jsoncalls import read_string
from llorch.worker.chat.formats.jsongrammar import any_call, repeated
from llorch.worker.chat.formats.sections import parse_call_lists
from llorch.worker.chat.types import Tool

START = "<|tools_prefix|>"
END = "<|tools_suffix|>"


def _read_call(text: str, at: int, *, partial: bool) -> tuple[ParsedCall | None, int | None]:
    """`{"NAME": {...}}` from `at`: (the call so far, the index after it); (None, None) while
    its name is being written."""
    i = skip_space(text, at)
    if i >= len(text):
        return None, None
    if text[i] != "{":
        raise MalformedCall("a tool call is not a JSON object")
    i = skip_space(text, i + 1)
    if i >= len(text):
        return None, None
    name, i = read_string(text, i)
    i = skip_space(text, i)
    if name is None or i >= len(text):
        return None, None
    if text[i] != ":":
        raise MalformedCall("a tool call is not {NAME: arguments}")
    what = f"the call of {name}"
    arguments, end = json_arguments(text, i + 1, partial=partial, what=what)
    if end is None:
        return ParsedCall(name, arguments, complete=False), None
    close = skip_space(text, end)
    if close >= len(text):
        if not partial:
            raise MalformedCall(f"{what} is not closed")
        return ParsedCall(name, arguments, complete=False), None
    if text[close] != "}":
        raise MalformedCall(f"{what} has more than its arguments")
    if partial:
        try:
            object_text(arguments, what=what)
        except MalformedCall:
            return ParsedCall(name, arguments, complete=False), None  # the final parse judges
    return ParsedCall(name, arguments), close + 1


class ApertusFormat:
    name = "apertus"
    markers = (START, END)

    def matches(self, template: str) -> bool:
        return "<|tools_prefix|>" in template and "<|tools_suffix|>" in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        def read(text: str, i: int) -> tuple[ParsedCall | None, int | None]:
            return _read_call(text, i, partial=partial)

        return parse_call_lists(text, START, END, read, partial=partial, kind="JSON list")

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        ws = builder.rule("ws", "[ \\t\\n]{0,20}")

        def body(tool: Tool, arguments: str) -> str:
            name = gbnf_literal(json.dumps(tool.name, ensure_ascii=False))
            return f'"{{" {ws} {name} {ws} ":" {ws} {arguments} {ws} "}}"'

        call = any_call(builder, tools, body)
        calls = repeated(call, '", "', parallel=parallel)
        root = f"{gbnf_literal(START + '[')} {calls} {gbnf_literal(']' + END)}"
        return ToolGrammar(gbnf=builder.build(root), triggers=(regex_literal(START),))


FORMAT = ApertusFormat()
