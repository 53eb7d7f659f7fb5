"""MiniMax M1: the calls are JSON objects, one a line, inside `<tool_calls>` tags,

    <tool_calls>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    {"name": "search", "arguments": {"query": "x"}}
    </tool_calls>

(MiniMax-M1.jinja: the template's system turn asks for this shape and renders an assistant's
calls so.) Apriel writes a JSON list in the same tags (apriel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    Parsed,
    ParsedCall,
    ToolGrammar,
    gbnf_literal,
    regex_literal,
    skip_space,
)
from llorch.worker.chat.formats.jsoncalls import CallKeys, read_object
from llorch.worker.chat.formats.jsongrammar import call_objects, repeated
from llorch.worker.chat.formats.sections import read_sections, unfinished
from llorch.worker.chat.types import Tool

START = "<tool_calls>"
END = "</tool_calls>"
KEYS = CallKeys(names=("name",), arguments=("arguments",))


@dataclass(frozen=True)
class MinimaxM1Format:
    name: str = "minimax_m1"
    markers: tuple[str, ...] = (START, END)

    def matches(self, template: str) -> bool:
        return START in template and "<beginning_of_sentence>ai name=assistant" in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        def section(text: str, at: int, _: str) -> tuple[list[ParsedCall], int | None]:
            calls: list[ParsedCall] = []
            i = at
            while True:
                i = skip_space(text, i)
                if text.startswith(END, i):
                    return calls, i + len(END)
                if i >= len(text) or (partial and END.startswith(text[i:])):
                    if not partial and calls:
                        return calls, i  # the output ended before </tool_calls>
                    return unfinished(calls, partial=partial, why=f"{START} is not closed")
                obj = read_object(text, i, KEYS, partial=partial)
                call = obj.call(partial=partial)
                if call is not None:
                    calls.append(call)
                if obj.end is None:
                    return calls, None
                i = obj.end

        return read_sections(text, (START,), section, partial=partial)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        call = call_objects(builder, tools)
        calls = repeated(call, '"\\n"', parallel=parallel)
        root = f"{gbnf_literal(START + chr(10))} {calls} {gbnf_literal(chr(10) + END)}"
        return ToolGrammar(gbnf=builder.build(root), triggers=(regex_literal(START),))


FORMAT = MinimaxM1Format()
