"""Hermes 2 Pro / Hermes 3, Qwen 2.5, Qwen 3, QwQ (and every template that asks for the same):
each call is a JSON object inside tags,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

several calls one after the other. Qwen3-Coder and Qwen 3.5 also write <tool_call>, but with
XML parameters inside (`<function=NAME>`): they are not this family.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    Parsed,
    ParsedCall,
    ToolGrammar,
    regex_literal,
)
from llorch.worker.chat.formats.jsoncalls import CallKeys, read_object
from llorch.worker.chat.formats.jsongrammar import call_objects, repeated
from llorch.worker.chat.formats.sections import closing, read_sections
from llorch.worker.chat.types import Tool

START = "<tool_call>"
END = "</tool_call>"
# Hermes 2 Pro's template prints {"name": ..., "arguments": ...}; some fine-tunes of it write
# "parameters" instead.
KEYS = CallKeys(names=("name",), arguments=("arguments", "parameters"))
# The JSON shape the templates show: `{"name": ` written as text or inside a Jinja string.
JSON_CALL = re.compile(r'\{\\?"name\\?"')


@dataclass(frozen=True)
class HermesFormat:
    name: str = "hermes"
    markers: tuple[str, ...] = (START, END)

    def matches(self, template: str) -> bool:
        # Qwen3-Coder / Qwen 3.5 / Nemotron write `<tool_call>\n<function=NAME>` (XML), GLM and
        # Laguna `<tool_call>NAME<arg_key>`, Apriel a JSON list in `<tool_calls>`.
        if START not in template or "<function=" in template or "<arg_key>" in template:
            return False
        return "<tool_calls>" not in template and JSON_CALL.search(template) is not None

    def parse(self, text: str, *, partial: bool) -> Parsed:
        def section(text: str, at: int, _: str) -> tuple[list[ParsedCall], int | None]:
            obj = read_object(text, at, KEYS, partial=partial)
            end = None
            if obj.end is not None:
                end = closing(text, obj.end, END, partial=partial, also=(START,))
            call = obj.call(partial=partial, closed=end is not None)
            return ([] if call is None else [call]), end

        return read_sections(text, (START,), section, partial=partial)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        call = call_objects(builder, tools)
        # The templates write `<tool_call>\n{...}\n</tool_call>`, calls separated by "\n".
        tagged = builder.rule("tagged-call", f'"{START}" ws {call} ws "{END}"')
        return ToolGrammar(
            gbnf=builder.build(repeated(tagged, "ws", parallel=parallel)),
            triggers=(regex_literal(START),),
        )


FORMAT = HermesFormat()
