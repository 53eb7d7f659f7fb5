"""GLM 4.5, 4.6 and 4.7 (and templates of the same syntax: Ling 3.0, Laguna): the function's
name right after <tool_call>, then key and value elements of raw text.

    <tool_call>get_weather
    <arg_key>city</arg_key>
    <arg_value>Paris</arg_value>
    </tool_call>

GLM-4.6.jinja puts each element on a line of its own; GLM-4.7-Flash.jinja writes the same
without the newlines, so both are read (and the grammar lets the model choose).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    Parsed,
    ParsedCall,
    ToolGrammar,
    first_marker,
    gbnf_literal,
    regex_literal,
    skip_space,
)
from llorch.worker.chat.formats.sections import parse_sections, unfinished
from llorch.worker.chat.formats.xmlcalls import read_xml_call, xml_calls
from llorch.worker.chat.types import Tool

CALL_START = "<tool_call>"
CALL_END = "</tool_call>"
KEY_START = "<arg_key>"
VALUE_END = "</arg_value>"

_KEY = re.compile(r"\s*<arg_key>(.*?)</arg_key>\s*<arg_value>", re.DOTALL)
_CALL_END = re.compile(r"\s*</tool_call>")


class Glm45Format:
    name = "glm45"
    markers = (CALL_START, CALL_END, KEY_START, "</arg_key>", "<arg_value>", VALUE_END)

    def matches(self, template: str) -> bool:
        return all(tag in template for tag in (CALL_START, KEY_START, "<arg_value>"))

    def parse(self, text: str, *, partial: bool) -> Parsed:
        return parse_sections(text, (CALL_START,), partial=partial, read=self._read)

    def _read(self, text: str, at: int, partial: bool) -> tuple[list[ParsedCall], int | None]:
        at = skip_space(text, at + len(CALL_START))
        # The name ends at the line's end (4.6), the first key (4.7) or the end of a call
        # without arguments.
        hit = first_marker(text[at:], ("\n", KEY_START, CALL_END))
        if hit is None:
            return unfinished([], partial=partial, why="a <tool_call> without a name")
        name = text[at : at + hit[0]].strip()
        at += hit[0]
        call, end = read_xml_call(
            text, at, name, parameter=_KEY, value_end=VALUE_END, call_end=_CALL_END
        )
        if end is None or not name:
            return unfinished([call] if name else [], partial=partial, why="an unclosed call")
        return [call], end

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        calls = xml_calls(
            builder,
            tools,
            parameter=lambda key, value: (
                f'"\\n"? "<arg_key>" {key} "</arg_key>" "\\n"? "<arg_value>" {value} "</arg_value>"'
            ),
            close=VALUE_END,
            any_name="[^<]+",
            call=lambda tool, params: f"{gbnf_literal(tool.name)} {params}",
        )
        builder.rule("call", f'"<tool_call>" ({calls}) "\\n"? "</tool_call>"')
        root = 'call ("\\n"? call)*' if parallel else "call"
        return ToolGrammar(builder.build(root), triggers=(regex_literal(CALL_START),))


FORMAT = Glm45Format()
