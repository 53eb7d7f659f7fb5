"""ByteDance Seed-OSS: each call an XML-like block in <seed:tool_call> tags, each parameter an
element of raw text (Qwen3-Coder's elements, without its newlines around the values).

    <seed:tool_call>
    <function=get_weather>
    <parameter=city>Paris</parameter>
    </function>
    </seed:tool_call>

(ByteDance-Seed-OSS.jinja; several calls are several blocks.) The template writes a value
that is not a string with Jinja's `string` filter, i.e. as Python writes it (`True`,
`{'a': 1}`), so the model learnt those: a value that is a Python literal other than a string
is read as that value, as JSON is (the grammar forces JSON, which reads the same).
"""

from __future__ import annotations

import ast
import json
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

CALL_START = "<seed:tool_call>"
CALL_END = "</seed:tool_call>"
VALUE_END = "</parameter>"

_FUNCTION = re.compile(r"\s*<function=([^>\n]*)>")
_PARAMETER = re.compile(r"\s*<parameter=([^>\n]*)>")
_FUNCTION_END = re.compile(r"\s*</function>")
_CALL_END = re.compile(r"\s*</seed:tool_call>")


def _python_value(raw: str) -> str:
    """A value as Python writes it (a literal other than a string) as JSON text, for
    xmlcalls to read; anything else as it is."""
    text = raw.strip()
    if not text or text[0] not in "{[TFN(":
        return raw
    try:
        value = ast.literal_eval(text)
        return raw if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return raw


def _function_gbnf(tool: Tool, params: str) -> str:
    opening = gbnf_literal(f"<function={tool.name}>\n")
    return f'{opening} {params} "</function>\\n"'


class SeedOssFormat:
    name = "seed_oss"
    markers = (CALL_START, CALL_END, "<function=", "</function>", "<parameter=", VALUE_END)

    def matches(self, template: str) -> bool:
        return all(tag in template for tag in (CALL_START, "<function=", "<parameter="))

    def parse(self, text: str, *, partial: bool) -> Parsed:
        return parse_sections(text, (CALL_START,), partial=partial, read=self._read)

    def _read(self, text: str, at: int, partial: bool) -> tuple[list[ParsedCall], int | None]:
        function = _FUNCTION.match(text, at + len(CALL_START))
        if function is None:
            return unfinished([], partial=partial, why=f"a {CALL_START} without <function=...>")
        name = function.group(1).strip()
        call, end = read_xml_call(
            text,
            function.end(),
            name,
            parameter=_PARAMETER,
            value_end=VALUE_END,
            call_end=_FUNCTION_END,
            value=_python_value,
        )
        if end is None:
            return unfinished([call], partial=partial, why=f"the call of {name} is not closed")
        section = _CALL_END.match(text, end)
        if section is not None:
            return [call], section.end()
        if not partial and not text[end:].strip():
            return [call], len(text)  # the output ended before </seed:tool_call>
        return unfinished([call], partial=partial, why=f"</function> without {CALL_END}")

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        calls = xml_calls(
            builder,
            tools,
            parameter=lambda key, value: f'"<parameter=" {key} ">" {value} "</parameter>\\n"',
            close=VALUE_END,
            any_name="[^>\\n]+",
            call=_function_gbnf,
        )
        opening = gbnf_literal(CALL_START + "\n")
        builder.rule("call", f"{opening} ({calls}) {gbnf_literal(CALL_END)}")
        root = 'call ("\\n" call)*' if parallel else "call"
        return ToolGrammar(builder.build(root), triggers=(regex_literal(CALL_START),))


FORMAT = SeedOssFormat()
