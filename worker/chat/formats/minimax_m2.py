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
    tool_prefix,
)
from llorch.worker.chat.formats.sections import (
    parse_sections,
    unfinished,
)
from llorch.worker.chat.formats.xmlcalls import (
    parameters_expression,
    xml_arguments,
)
from llorch.worker.chat.types import Tool

SECTION_START = "<minimax:tool_call>"
SECTION_END = "</minimax:tool_call>"
VALUE_END = "</parameter>"

_INVOKE = re.compile(r'\s*<invoke name="([^"]*)">')
_PARAMETER = re.compile(r'\s*<parameter name="([^"]*)">')
_INVOKE_END = re.compile(r"\s*</invoke>")
_SECTION_END = re.compile(r"\s*</minimax:tool_call>")


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
            params: list[tuple[str, str]] = []
            at = invoke.end()
            while (parameter := _PARAMETER.match(text, at)) is not None:
                close = text.find(VALUE_END, parameter.end())
                if close < 0:
                    break
                params.append((parameter.group(1).strip(), text[parameter.end() : close]))
                at = close + len(VALUE_END)
            end = _INVOKE_END.match(text, at)
            if end is None:
                calls.append(
                    ParsedCall(name, xml_arguments(params, complete=False), complete=False)
                )
                return unfinished(calls, partial=partial, why=f"the call of {name} is not closed")
            calls.append(ParsedCall(name, xml_arguments(params, complete=True)))
            at = end.end()
        section = _SECTION_END.match(text, at)
        if section is None:
            return unfinished(calls, partial=partial, why=f"{SECTION_START} is not closed")
        return calls, section.end()

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        names = []
        for index, tool in enumerate(tools):
            prefix = tool_prefix(index, tool)
            params = parameters_expression(
                builder,
                tool,
                prefix,
                lambda key, value: f'"<parameter name=\\"" {key} "\\">" {value} "</parameter>\\n"',
                VALUE_END,
                '[^"]+',
            )
            opening = gbnf_literal(f'<invoke name="{tool.name}">\n')
            names.append(builder.rule(prefix, f'{opening} {params} "</invoke>\\n"'))
        builder.rule("invoke", " | ".join(names))
        calls = "invoke+" if parallel else "invoke"
        root = f'"<minimax:tool_call>\\n" {calls} "</minimax:tool_call>"'
        return ToolGrammar(builder.build(root), triggers=(regex_literal(SECTION_START),))


FORMAT = MinimaxM2Format()
