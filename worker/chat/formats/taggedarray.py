"""Calls written as one JSON array of call objects between an opening and a closing tag
(Nemotron Nano v2's `<TOOLCALL>[…]</TOOLCALL>`, Apriel's `<tool_calls>[…]</tool_calls>`):
the array is read as it streams with jsoncalls, the grammar is the tags around the array of
each tool's call objects."""

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
)
from llorch.worker.chat.formats.jsoncalls import CallKeys, read_array
from llorch.worker.chat.formats.jsongrammar import call_objects, repeated
from llorch.worker.chat.formats.sections import closing, read_sections
from llorch.worker.chat.types import Tool

KEYS = CallKeys(names=("name",), arguments=("arguments",), ids=("id",))


@dataclass(frozen=True)
class TaggedArrayFormat:
    """A family whose calls are `start[{"name": …, "arguments": {…}}, …]end`; its template is
    recognised by every one of `signs` (pieces of its own source)."""

    name: str
    start: str
    end: str
    signs: tuple[str, ...]
    keys: CallKeys = KEYS

    @property
    def markers(self) -> tuple[str, ...]:
        return (self.start, self.end)

    def matches(self, template: str) -> bool:
        return all(sign in template for sign in self.signs)

    def parse(self, text: str, *, partial: bool) -> Parsed:
        def section(text: str, at: int, _: str) -> tuple[list[ParsedCall], int | None]:
            calls, end = read_array(text, at, self.keys, partial=partial)
            if end is None:
                return calls, None
            return calls, closing(text, end, self.end, partial=partial, also=(self.start,))

        return read_sections(text, (self.start,), section, partial=partial)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        call = call_objects(builder, tools)
        calls = repeated(call, 'ws "," ws', parallel=parallel)
        root = f'{gbnf_literal(self.start)} "[" ws {calls} ws "]" {gbnf_literal(self.end)}'
        return ToolGrammar(gbnf=builder.build(root), triggers=(regex_literal(self.start),))
