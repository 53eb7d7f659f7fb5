"""Upstage Solar Open: the calls follow `<|tool_calls|>`, each its id, name and JSON arguments
between tool-call tokens, and `<|calls|>` ends them,

    <|tool_calls|><|tool_call:begin|>call_0<|tool_call:name|>get_weather<|tool_call:args|>{"city": "Paris"}<|tool_call:end|><|calls|>

(upstage-Solar-Open-100B.jinja.) The template writes an assistant's thinking, content and calls
as messages of their own (`<|begin|>assistant<|think|>`, `<|content|>`, `<|tool_calls|>`);
only the calls are this module's.
"""  # noqa: E501

from __future__ import annotations

import re
from collections.abc import Sequence

from llorch.worker.chat.formats.base import Parsed, ToolGrammar, gbnf_literal
from llorch.worker.chat.formats.sections import JsonCallSections
from llorch.worker.chat.types import Tool

SECTION = "<|tool_calls|>"
CALL_BEGIN = "<|tool_call:begin|>"
NAME = "<|tool_call:name|>"
ARGS = "<|tool_call:args|>"
CALL_END = "<|tool_call:end|>"
CALLS_END = "<|calls|>"


def _e(token: str) -> str:
    return re.escape(token)


CALLS = JsonCallSections(
    starts=(SECTION,),
    opening=re.compile(_e(SECTION)),
    header=re.compile(rf"\s*{_e(CALL_BEGIN)}(?P<id>[^<]*){_e(NAME)}(?P<name>[^<]+){_e(ARGS)}"),
    closing=re.compile(rf"\s*{_e(CALL_END)}"),
    ending=re.compile(rf"\s*{_e(CALLS_END)}"),
    section=(SECTION, CALLS_END),
    call=(CALL_BEGIN, CALL_END),
    # The id: what the template's ids look like (call_0, or OpenAI's call_...), bounded.
    head=lambda tool: f'"call_" [a-zA-Z0-9]{{1,24}} {gbnf_literal(NAME + tool.name + ARGS)}',
)


class SolarOpenFormat:
    name = "solar_open"
    markers = (SECTION, CALL_BEGIN, NAME, ARGS, CALL_END, CALLS_END)

    def matches(self, template: str) -> bool:
        return CALL_BEGIN in template and ARGS in template and CALLS_END in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        return CALLS.parse(text, partial=partial)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        return CALLS.grammar(tools, parallel=parallel)


FORMAT = SolarOpenFormat()
