"""MiniMax M2: one <minimax:tool_call> block holding an <invoke> element per call, each
parameter an element of raw text.

    <minimax:tool_call>
    <invoke name="get_weather">
    <parameter name="city">Paris</parameter>
    </invoke>
    </minimax:tool_call>

(MiniMax-M2.jinja; several calls are several <invoke> elements of the one block.)
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
    regex_literal,
)
from llorch.worker.chat.formats.sections import parse_sections, unfinished
from llorch.worker.chat.formats.xmlcalls import read_xml_call, xml_calls
from llorch.worker.chat.types import Tool

SECTION_START = "<minimax:tool_call>"
SECTION_END = "</minimax:tool_call>"
VALUE_END = "</parameter>"

_INVOKE = re.compile(r'\s*<invoke name="([^"]*)">')
_PARAMETER = re.compile(r'\s*<parameter name="([^"]*)">')
_INVOKE_END = re.compile(r"\s*</invoke>")
_SECTION_END = re.compile(r"\s*</minimax:tool_call>")


def _invoke_gbnf(tool: Tool, params: str) -> str:
    opening = gbnf_literal(f'<invoke name="{tool.name}">\n')
    return f'{opening} {params} "</invoke>\\n"'


class MinimaxM2Format:
    name = "minimax_m2"
    markers = (
        SECTION_START,
        SECTION_END,
        "<invoke name=",
        "</invoke>",
        "<parameter name=",
        VALUE_END,
    )

    def matches(self, template: str) -> bool:
        return SECTION_START in template and "<invoke name=" in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        return parse_sections(text, (SECTION_START,), partial=partial, read=self._read)

    def _read(self, text: str, at: int, partial: bool) -> tuple[list[ParsedCall], int | None]:
        at += len(SECTION_START)
        calls: list[ParsedCall] = []
        while (invoke := _INVOKE.match(text, at)) is not None:
            name = invoke.group(1).strip()
            call, end = read_xml_call(
                text,
                invoke.end(),
                name,
                parameter=_PARAMETER,
                value_end=VALUE_END,
                call_end=_INVOKE_END,
            )
            calls.append(call)
            if end is None:
                return unfinished(calls, partial=partial, why=f"the call of {name} is not closed")
            at = end
        section = _SECTION_END.match(text, at)
        if section is None:
            return unfinished(calls, partial=partial, why=f"{SECTION_START} is not closed")
        return calls, section.end()

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        invokes = xml_calls(
            builder,
            tools,
            parameter=lambda key, value: (
                f'"<parameter name=\\"" {key} "\\">" {value} "</parameter>\\n"'
            ),
            close=VALUE_END,
            any_name='[^"]+',
            call=_invoke_gbnf,
        )
        builder.rule("invoke", invokes)
        calls = "invoke+" if parallel else "invoke"
        root = f'"<minimax:tool_call>\\n" {calls} "</minimax:tool_call>"'
        return ToolGrammar(builder.build(root), triggers=(regex_literal(SECTION_START),))


FORMAT = MinimaxM2Format()
