"""Kimi K2 (Instruct and Thinking): a section of calls between Kimi's tool tokens, each call
with an id `functions.NAME:INDEX` (the index counts the conversation's calls) and JSON
arguments.

    <|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>

(Kimi-K2-Instruct.jinja, Kimi-K2-Thinking.jinja, moonshotai-Kimi-K2.jinja; llama.cpp's
common/parsers/kimi-k2.cpp also takes a call without the section's tokens around it.)
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
from llorch.worker.chat.types import Tool

SECTION_BEGIN = "<|tool_calls_section_begin|>"
SECTION_END = "<|tool_calls_section_end|>"
CALL_BEGIN = "<|tool_call_begin|>"
ARGUMENTS_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"

_OPENING = re.compile(f"{re.escape(SECTION_BEGIN)}|(?={re.escape(CALL_BEGIN)})")
_HEADER = re.compile(
    rf"\s*{re.escape(CALL_BEGIN)}\s*(?P<name>[^<]*?)\s*{re.escape(ARGUMENTS_BEGIN)}"
)
_CLOSING = re.compile(rf"\s*{re.escape(CALL_END)}")
_ENDING = re.compile(rf"\s*{re.escape(SECTION_END)}")
# The function's name inside the call's id (an id without the prefix or index is a bare name).
_ID = re.compile(r"(?:functions\.)?(?P<name>.+?)(?::\d+)?")


class KimiK2Format:
    name = "kimi_k2"
    markers = (SECTION_BEGIN, SECTION_END, CALL_BEGIN, ARGUMENTS_BEGIN, CALL_END)

    def matches(self, template: str) -> bool:
        # The same test as llama.cpp's common_chat_try_specialized_template.
        return SECTION_BEGIN in template and CALL_BEGIN in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        return parse_sections(text, (SECTION_BEGIN, CALL_BEGIN), partial=partial, read=self._read)

    def _read(self, text: str, at: int, partial: bool) -> tuple[list[ParsedCall], int | None]:
        calls, end = read_json_calls(
            text,
            at,
            partial,
            opening=_OPENING,
            header=_HEADER,
            closing=_CLOSING,
            ending=_ENDING,
        )
        return [self._named(call) for call in calls], end

    @staticmethod
    def _named(call: ParsedCall) -> ParsedCall:
        # The header's "name" group is the whole id.
        match = _ID.fullmatch(call.name)
        name = match.group("name") if match else call.name
        return ParsedCall(name, call.arguments, call.name, call.complete)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        names = []
        for index, tool in enumerate(tools):
            head = gbnf_literal(f"functions.{tool.name}:")
            body = f"{head} [0-9]+ {gbnf_literal(ARGUMENTS_BEGIN)} {builder.arguments_rule(tool)}"
            names.append(builder.rule(f"tool{index}-{rule_name(tool.name)}", body))
        call = f"{gbnf_literal(CALL_BEGIN)} ({' | '.join(names)}) {gbnf_literal(CALL_END)}"
        builder.rule("call", call)
        calls = "call+" if parallel else "call"
        root = f"{gbnf_literal(SECTION_BEGIN)} {calls} {gbnf_literal(SECTION_END)}"
        return ToolGrammar(builder.build(root), triggers=(regex_literal(SECTION_BEGIN),))


FORMAT = KimiK2Format()
