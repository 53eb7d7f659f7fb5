# ruff: noqa: RUF002 (DeepSeek's tokens are written with full-width bars)
"""DeepSeek V3.1: R1's tool tokens, each call the function's name and its JSON arguments.

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>

(deepseek-ai-DeepSeek-V3.1.jinja: content comes right before the section, calls follow each
other with nothing between.) DeepSeek V3.2 is not this family: its template writes calls in
its own DSML markup (<｜DSML｜function_calls>, <｜DSML｜invoke name=...>).
"""  # noqa: E501

from __future__ import annotations

import re
from collections.abc import Sequence

from llorch.worker.chat.formats.base import Parsed, ToolGrammar, gbnf_literal
from llorch.worker.chat.formats.deepseek_markup import (
    CALL_BEGIN,
    CALL_END,
    CALLS_BEGIN,
    MARKERS,
    SEPARATOR,
    deepseek_calls,
)
from llorch.worker.chat.types import Tool

CALLS = deepseek_calls(
    header=re.compile(rf"\s*{CALL_BEGIN}(?P<name>[^\n<]+){SEPARATOR}"),
    closing=re.compile(rf"\s*{CALL_END}"),
    call=(CALL_BEGIN, CALL_END),
    head=lambda tool: gbnf_literal(tool.name + SEPARATOR),
)


class DeepseekV31Format:
    name = "deepseek_v31"
    markers = MARKERS

    def matches(self, template: str) -> bool:
        # R1 fences the arguments as ```json; V3.1 writes them bare after the separator.
        return CALLS_BEGIN in template and SEPARATOR in template and "```json" not in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        return CALLS.parse(text, partial=partial)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        return CALLS.grammar(tools, parallel=parallel)


FORMAT = DeepseekV31Format()
