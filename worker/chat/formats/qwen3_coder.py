"""Qwen3-Coder and Qwen 3.5 (and other templates of the same syntax: Nemotron 3 Nano,
StepFun 3.5): each call is an XML-like block, each parameter an element of raw text.

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

(Qwen3-Coder.jinja, Qwen3.5-4B.jinja; llama.cpp's common/parsers/qwen3-coder.cpp reads the
same. Calls follow each other, each opening on a new line.)
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

CALL_START = "<tool_call>"
CALL_END = "</tool_call>"
VALUE_CLOSE = "\n</parameter>"

_FUNCTION = re.compile(r"\s*<function=([^>\n]*)>")
_PARAMETER = re.compile(r"\s*<parameter=([^>\n]*)>")
_FUNCTION_END = re.compile(r"\s*</function>")
_CALL_END = re.compile(r"\s*</tool_call>")


def _value(raw: str) -> str:
    # The template puts the value on lines of its own: `<parameter=K>\n` VALUE `\n</parameter>`.
    raw = raw.removeprefix("\n")
    return raw.removesuffix("\n")


def _function_gbnf(tool: Tool, params: str) -> str:
    opening = gbnf_literal(f"<function={tool.name}>\n")
    return f'{opening} {params} "</function>\\n"'


class Qwen3CoderFormat:
    name = "qwen3_coder"
    markers = (CALL_START, CALL_END, "<function=", "</function>", "<parameter=", "</parameter>")

    def matches(self, template: str) -> bool:
        # The same test as llama.cpp's common_chat_try_specialized_template.
        return all(tag in template for tag in (CALL_START, "<function=", "<parameter="))

    def parse(self, text: str, *, partial: bool) -> Parsed:
        return parse_sections(text, (CALL_START,), partial=partial, read=self._read)

    def _read(self, text: str, at: int, partial: bool) -> tuple[list[ParsedCall], int | None]:
        function = _FUNCTION.match(text, at + len(CALL_START))
        if function is None:
            return unfinished([], partial=partial, why="a <tool_call> without <function=...>")
        name = function.group(1).strip()
        call, end = read_xml_call(
            text,
            function.end(),
            name,
            parameter=_PARAMETER,
            value_end="</parameter>",
            call_end=_FUNCTION_END,
            value=_value,
        )
        if end is None:
            return unfinished([call], partial=partial, why=f"the call of {name} is not closed")
        section = _CALL_END.match(text, end)
        if section is not None:
            return [call], section.end()
        if not partial and not text[end:].strip():
            return [call], len(text)  # the output ended before </tool_call>: the call is whole
        return unfinished([call], partial=partial, why="</function> without </tool_call>")

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        calls = xml_calls(
            builder,
            tools,
            parameter=lambda key, value: f'"<parameter=" {key} ">\\n" {value} "\\n</parameter>\\n"',
            close=VALUE_CLOSE,
            any_name="[^>\\n]+",
            call=_function_gbnf,
        )
        builder.rule("call", f'"<tool_call>\\n" ({calls}) "</tool_call>"')
        root = 'call ("\\n" call)*' if parallel else "call"
        return ToolGrammar(builder.build(root), triggers=(regex_literal(CALL_START),))


FORMAT = Qwen3CoderFormat()
