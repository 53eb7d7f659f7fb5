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

from llorch.worker.chat.formats.base import Parsed, ParsedCall, ToolGrammar, gbnf_literal
from llorch.worker.chat.formats.sections import JsonCallSections
from llorch.worker.chat.types import Tool

SECTION_BEGIN = "<|tool_calls_section_begin|>"
SECTION_END = "<|tool_calls_section_end|>"
CALL_BEGIN = "<|tool_call_begin|>"
ARGUMENTS_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"

CALLS = JsonCallSections(
    starts=(SECTION_BEGIN, CALL_BEGIN),
    opening=re.compile(f"{re.escape(SECTION_BEGIN)}|(?={re.escape(CALL_BEGIN)})"),
    # The header's "name" group is the whole id.
    header=re.compile(
        rf"\s*{re.escape(CALL_BEGIN)}\s*(?P<name>[^<]*?)\s*{re.escape(ARGUMENTS_BEGIN)}"
    ),
    closing=re.compile(rf"\s*{re.escape(CALL_END)}"),
    ending=re.compile(rf"\s*{re.escape(SECTION_END)}"),
    section=(SECTION_BEGIN, SECTION_END),
    call=(CALL_BEGIN, CALL_END),
    head=lambda tool: (
        f"{gbnf_literal(f'functions.{tool.name}:')} [0-9]{{1,3}} {gbnf_literal(ARGUMENTS_BEGIN)}"
    ),
)
# The function's name inside the call's id (an id without the prefix or index is a bare name).
_ID = re.compile(r"(?:functions\.)?(?P<name>.+?)(?::\d+)?")


class KimiK2Format:
    name = "kimi_k2"
    markers = (SECTION_BEGIN, SECTION_END, CALL_BEGIN, ARGUMENTS_BEGIN, CALL_END)

    def matches(self, template: str) -> bool:
        # The same test as llama.cpp's common_chat_try_specialized_template.
        return SECTION_BEGIN in template and CALL_BEGIN in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        parsed = CALLS.parse(text, partial=partial)
        return Parsed(parsed.content, tuple(_named(call) for call in parsed.calls))

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        return CALLS.grammar(tools, parallel=parallel)


def _named(call: ParsedCall) -> ParsedCall:
    """The call with its function's name, the id its header wrote as the id."""
    match = _ID.fullmatch(call.name)
    name = match.group("name") if match else call.name
    return ParsedCall(name, call.arguments, call.name, call.complete)


FORMAT = KimiK2Format()
