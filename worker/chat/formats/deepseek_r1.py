# ruff: noqa: RUF002 (DeepSeek's tokens are written with full-width bars)
"""DeepSeek R1 and its distills (and DeepSeek V3 before 3.1): calls between DeepSeek's tool
tokens, each naming its type and function and fencing its arguments as a JSON code block.

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
    ```json
    {"city": "Paris"}
    ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>

(deepseek-ai-DeepSeek-R1-Distill-*.jinja, llama-cpp-deepseek-r1.jinja; further calls follow
a newline. The bars are full-width and the spaces are U+2581, as in the tokenizer.)
"""

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

# The name ends the line; the fence before the arguments is optional here (not in the grammar).
CALLS = deepseek_calls(
    header=re.compile(
        rf"\s*{CALL_BEGIN}\s*(?:function)?\s*{SEPARATOR}(?P<name>[^\n`{{]+)\s*(?:```(?:json)?\s*)?(?=\{{)"
    ),
    closing=re.compile(rf"\s*(?:```)?\s*{CALL_END}"),
    call=(f"{CALL_BEGIN}function{SEPARATOR}", f"\n```{CALL_END}"),
    head=lambda tool: gbnf_literal(f"{tool.name}\n```json\n"),
    joiner="\n",
)


class DeepseekR1Format:
    name = "deepseek_r1"
    markers = MARKERS

    def matches(self, template: str) -> bool:
        # V3.1 writes the same tokens without the type and the ```json fence.
        return CALLS_BEGIN in template and "```json" in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        return CALLS.parse(text, partial=partial)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        return CALLS.grammar(tools, parallel=parallel)


FORMAT = DeepseekR1Format()
