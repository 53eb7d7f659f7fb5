"""The `<function=NAME>` block syntax that Qwen3-Coder (with Qwen 3.5) and Seed-OSS share: each
call a block inside its section's tags, each parameter a `<parameter=KEY>` element of raw text.

    <SECTION>
    <function=get_weather>
    <parameter=city>Paris</parameter>
    </function>
    </SECTION>

What differs between the families is the section's tags, whether a value sits on lines of its
own, and how a value's text reads: each family's module gives those to `FunctionBlocksFormat`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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

VALUE_END = "</parameter>"
_FUNCTION = re.compile(r"\s*<function=([^>\n]*)>")
_PARAMETER = re.compile(r"\s*<parameter=([^>\n]*)>")
_FUNCTION_END = re.compile(r"\s*</function>")


def _function_gbnf(tool: Tool, params: str) -> str:
    opening = gbnf_literal(f"<function={tool.name}>\n")
    return f'{opening} {params} "</function>\\n"'


@dataclass(frozen=True)
class FunctionBlocksFormat:
    name: str
    call_start: str  # the section's tags, e.g. <tool_call> ... </tool_call>
    call_end: str
    # How a value's raw text (between `<parameter=K>` and `</parameter>`) reads, as xmlcalls
    # then types it.
    value: Callable[[str], str]
    # `<parameter=K>\n` VALUE `\n</parameter>` (Qwen3-Coder) rather than `<parameter=K>VALUE`.
    value_on_own_lines: bool
    markers: tuple[str, ...] = field(init=False)
    _section_end: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        tags = ("<function=", "</function>", "<parameter=", VALUE_END)
        object.__setattr__(self, "markers", (self.call_start, self.call_end, *tags))
        # Once here: a streamed answer is parsed again at every token.
        end = re.compile(r"\s*" + re.escape(self.call_end))
        object.__setattr__(self, "_section_end", end)

    def matches(self, template: str) -> bool:
        # The same test as llama.cpp's common_chat_try_specialized_template.
        return all(tag in template for tag in (self.call_start, "<function=", "<parameter="))

    def parse(self, text: str, *, partial: bool) -> Parsed:
        return parse_sections(text, (self.call_start,), partial=partial, read=self._read)

    def _read(self, text: str, at: int, partial: bool) -> tuple[list[ParsedCall], int | None]:
        function = _FUNCTION.match(text, at + len(self.call_start))
        if function is None:
            why = f"a {self.call_start} without <function=...>"
            return unfinished([], partial=partial, why=why)
        name = function.group(1).strip()
        call, end = read_xml_call(
            text,
            function.end(),
            name,
            parameter=_PARAMETER,
            value_end=VALUE_END,
            call_end=_FUNCTION_END,
            value=self.value,
        )
        if end is None:
            return unfinished([call], partial=partial, why=f"the call of {name} is not closed")
        section = self._section_end.match(text, end)
        if section is not None:
            return [call], section.end()
        if not partial and not text[end:].strip():
            return [call], len(text)  # the output ended before the section's end: whole
        why = f"</function> without {self.call_end}"
        return unfinished([call], partial=partial, why=why)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        around = "\\n" if self.value_on_own_lines else ""
        calls = xml_calls(
            builder,
            tools,
            parameter=lambda key, value: (
                f'"<parameter=" {key} ">{around}" {value} "{around}</parameter>\\n"'
            ),
            close=("\n" if self.value_on_own_lines else "") + VALUE_END,
            any_name="[^>\\n]+",
            call=_function_gbnf,
        )
        opening = gbnf_literal(self.call_start + "\n")
        builder.rule("call", f"{opening} ({calls}) {gbnf_literal(self.call_end)}")
        root = 'call ("\\n" call)*' if parallel else "call"
        return ToolGrammar(builder.build(root), triggers=(regex_literal(self.call_start),))
