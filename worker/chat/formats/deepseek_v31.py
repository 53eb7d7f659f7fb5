# ruff: noqa: RUF002 (DeepSeek's tokens are written with full-width bars)
"""DeepSeek V3.1: R1's tool tokens, each call the function's name and its JSON arguments.

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>

(deepseek-ai-DeepSeek-V3.1.jinja: content comes right before the section, calls follow each
other with nothing between.) DeepSeek V3.2 is not this family: its template writes calls in
its own DSML markup (<｜DSML｜function_calls>, <｜DSML｜invoke name=...>).
"""  # noqa: E501

from __future__ import annotations

import re
from collections.abc import Sequence

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    Parsed,
    ParsedCall,
    ToolGrammar,
    gbnf_literal,
    parse_sections,
    read_json_calls,
    regex_literal,
    rule_name,
)
from llorch.worker.chat.formats.deepseek_r1 import (
    CALL_BEGIN,
    CALL_END,
    CALLS_BEGIN,
    CALLS_END,
    OPENINGS,
    SEPARATOR,
)
from llorch.worker.chat.types import Tool

_OPENING = re.compile("|".join(map(re.escape, OPENINGS[:-1])) + f"|(?={re.escape(CALL_BEGIN)})")
_HEADER = re.compile(rf"\s*{CALL_BEGIN}(?P<name>[^\n<]+){SEPARATOR}")
_CLOSING = re.compile(rf"\s*{CALL_END}")
_ENDING = re.compile(rf"\s*{CALLS_END}")


class DeepseekV31Format:
    name = "deepseek_v31"
    markers = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEPARATOR)

    def matches(self, template: str) -> bool:
        # R1 fences the arguments as ```json; V3.1 writes them bare after the separator.
        return CALLS_BEGIN in template and SEPARATOR in template and "```json" not in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        return parse_sections(text, OPENINGS, partial=partial, read=self._read)

    def _read(self, text: str, at: int, partial: bool) -> tuple[list[ParsedCall], int | None]:
        return read_json_calls(
            text,
            at,
            partial,
            opening=_OPENING,
            header=_HEADER,
            closing=_CLOSING,
            ending=_ENDING,
        )

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        names = []
        for index, tool in enumerate(tools):
            body = f"{gbnf_literal(tool.name + SEPARATOR)} {builder.arguments_rule(tool)}"
            names.append(builder.rule(f"tool{index}-{rule_name(tool.name)}", body))
        call = f"{gbnf_literal(CALL_BEGIN)} ({' | '.join(names)}) {gbnf_literal(CALL_END)}"
        builder.rule("call", call)
        calls = "call+" if parallel else "call"
        root = f"{gbnf_literal(CALLS_BEGIN)} {calls} {gbnf_literal(CALLS_END)}"
        return ToolGrammar(builder.build(root), triggers=(regex_literal(CALLS_BEGIN),))


FORMAT = DeepseekV31Format()
