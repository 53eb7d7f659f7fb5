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

from llorch.worker.chat.formats.function_blocks import FunctionBlocksFormat


def _value(raw: str) -> str:
    # The template puts the value on lines of its own: `<parameter=K>\n` VALUE `\n</parameter>`.
    raw = raw.removeprefix("\n")
    return raw.removesuffix("\n")


FORMAT = FunctionBlocksFormat(
    "qwen3_coder", "<tool_call>", "</tool_call>", value=_value, value_on_own_lines=True
)
