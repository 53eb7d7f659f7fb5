"""Mistral Nemo: the calls are one JSON array after `[TOOL_CALLS]`,

    [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1B2c3D4e"}]

Its template requires each call's id to be 9 alphanumerics (and answers tool results with it).
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
)
from llorch.worker.chat.formats.jsoncalls import CallKeys, read_array
from llorch.worker.chat.formats.jsongrammar import call_objects, repeated
from llorch.worker.chat.formats.sections import read_sections
from llorch.worker.chat.types import Tool

START = "[TOOL_CALLS]"
KEYS = CallKeys(names=("name",), arguments=("arguments",), ids=("id",))
CALL_ID_RULE = '"\\"" [a-zA-Z0-9]{9} "\\""'


@dataclass(frozen=True)
class MistralNemoFormat:
    name: str = "mistral_nemo"
    markers: tuple[str, ...] = (START,)

    def matches(self, template: str) -> bool:
        # Mistral Small 3.2, Ministral 3 and Devstral also write [TOOL_CALLS], followed by
        # NAME[ARGS]{...} (mistral_small, checked first).
        return START in template and "[ARGS]" not in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        def section(text: str, at: int, _: str) -> tuple[list[ParsedCall], int | None]:
            return read_array(text, at, KEYS, partial=partial)

        return read_sections(text, (START,), section, partial=partial)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        call_id = builder.rule("call-id", CALL_ID_RULE)
        call = call_objects(builder, tools, fields_after=[("id", call_id)])
        calls = repeated(call, 'ws "," ws', parallel=parallel)
        root = f'{gbnf_literal(START)} "[" ws {calls} ws "]"'
        return ToolGrammar(gbnf=builder.build(root), triggers=(regex_literal(START),))


FORMAT = MistralNemoFormat()
