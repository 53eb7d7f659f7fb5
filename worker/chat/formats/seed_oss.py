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

from llorch.worker.chat.formats.function_blocks import FunctionBlocksFormat


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


FORMAT = FunctionBlocksFormat(
    "seed_oss",
    "<seed:tool_call>",
    "</seed:tool_call>",
    value=_python_value,
    value_on_own_lines=False,
)
