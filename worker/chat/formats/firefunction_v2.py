"""FireFunction v2 (Llama 3 based): the calls are one JSON list after ` functools`,

    functools[{"name": "get_weather", "arguments": {"city": "Paris"}}]

Its template appends ` functools[...]` to the message's (trimmed) content; there is no closing
marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llorch.worker.chat.formats.base import GrammarBuilder, Parsed, ParsedCall, ToolGrammar
from llorch.worker.chat.formats.jsoncalls import CallKeys, read_array
from llorch.worker.chat.formats.jsongrammar import call_objects, repeated
from llorch.worker.chat.formats.sections import read_sections
from llorch.worker.chat.types import Tool

# The template writes " functools[" after the content; the space is whitespace between the
# content and the call (dropped from the content), so the marker read is without it.
START = "functools["
KEYS = CallKeys(names=("name",), arguments=("arguments",))


@dataclass(frozen=True)
class FirefunctionV2Format:
    name: str = "firefunction_v2"
    markers: tuple[str, ...] = (START,)

    def matches(self, template: str) -> bool:
        return " functools[" in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        def section(text: str, at: int, _: str) -> tuple[list[ParsedCall], int | None]:
            # The list starts at the marker's own "[".
            return read_array(text, at - 1, KEYS, partial=partial)

        return read_sections(text, (START,), section, partial=partial)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        call = call_objects(builder, tools)
        calls = repeated(call, 'ws "," ws', parallel=parallel)
        # The space is optional: the trigger starts the grammar at "functools[".
        root = f'" "? "functools[" ws {calls} ws "]"'
        return ToolGrammar(gbnf=builder.build(root), triggers=("functools\\[",))


FORMAT = FirefunctionV2Format()
