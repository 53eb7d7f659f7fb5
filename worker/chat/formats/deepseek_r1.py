# ruff: noqa: RUF001, RUF002 (DeepSeek's tokens are written with full-width bars)
"""DeepSeek R1 and its distills (and DeepSeek V3 before 3.1): calls between DeepSeek's tool
tokens, each naming its type and function and fencing its arguments as a JSON code block.

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
    ```json
    {"city": "Paris"}
    ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>

(deepseek-ai-DeepSeek-R1-Distill-*.jinja, llama-cpp-deepseek-r1.jinja; further calls follow
a newline. The bars are full-width and the spaces are U+2581, as in the tokenizer.)
"""

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
from llorch.worker.chat.types import Tool

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEPARATOR = "<｜tool▁sep｜>"

# The distills do not always spell the section's token right: llama.cpp's
# common_chat_parse_deepseek_r1 (before its automatic parser replaced it) took these spellings
# too. A call without the section's token is read as well.
OPENINGS = (
    CALLS_BEGIN,
    "<｜tool_calls_begin｜>",
    "<｜tool calls begin｜>",
    "<｜tool\\_calls\\_begin｜>",
    "<｜tool▁calls｜>",
    CALL_BEGIN,
)

_OPENING = re.compile("|".join(map(re.escape, OPENINGS[:-1])) + f"|(?={re.escape(CALL_BEGIN)})")
# The name ends the line; the fence before the arguments is optional here (not in the grammar).
_HEADER = re.compile(
    rf"\s*{CALL_BEGIN}\s*(?:function)?\s*{SEPARATOR}(?P<name>[^\n`{{]+)\s*(?:```(?:json)?\s*)?(?=\{{)"
)
_CLOSING = re.compile(rf"\s*(?:```)?\s*{CALL_END}")
_ENDING = re.compile(rf"\s*{CALLS_END}")


class DeepseekR1Format:
    name = "deepseek_r1"
    markers = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEPARATOR)

    def matches(self, template: str) -> bool:
        # V3.1 writes the same tokens without the type and the ```json fence.
        return CALLS_BEGIN in template and "```json" in template

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
            head = gbnf_literal(f"{tool.name}\n```json\n")
            body = f"{head} {builder.arguments_rule(tool)}"
            names.append(builder.rule(f"tool{index}-{rule_name(tool.name)}", body))
        opening = gbnf_literal(f"{CALL_BEGIN}function{SEPARATOR}")
        closing = gbnf_literal(f"\n```{CALL_END}")
        builder.rule("call", f"{opening} ({' | '.join(names)}) {closing}")
        calls = 'call ("\\n" call)*' if parallel else "call"
        root = f"{gbnf_literal(CALLS_BEGIN)} {calls} {gbnf_literal(CALLS_END)}"
        return ToolGrammar(builder.build(root), triggers=(regex_literal(CALLS_BEGIN),))


FORMAT = DeepseekR1Format()
