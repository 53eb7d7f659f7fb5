# ruff: noqa: RUF001, RUF002 (DeepSeek's DSML token is written with full-width bars)
"""What DeepSeek V3.2 and V4 share (deepseek_v32, deepseek_v4): calls in DSML markup, one
block of <invoke> elements, each parameter saying whether its value is a raw string or JSON.

    <｜DSML｜function_calls>
    <｜DSML｜invoke name="get_weather">
    <｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>
    <｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜function_calls>

(deepseek-ai-DeepSeek-V3.2.jinja; V4 and V4-Flash name the block `tool_calls`. llama.cpp's
common/parsers/deepseek.cpp reads and forces the same: string="true" for a parameter whose
schema may be a string, its text up to </｜DSML｜parameter>; JSON otherwise.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    MalformedCall,
    Parsed,
    ParsedCall,
    ToolGrammar,
    gbnf_literal,
    gbnf_until,
    regex_literal,
    rule_name,
    tool_rules,
)
from llorch.worker.chat.formats.sections import read_sections, unfinished
from llorch.worker.chat.formats.xmlcalls import value_expression, xml_value
from llorch.worker.chat.types import Tool

DSML = "｜DSML｜"
BLOCKS = ("function_calls", "tool_calls")  # V3.2, V4
STARTS = tuple(f"<{DSML}{block}>" for block in BLOCKS)
INVOKE = f"<{DSML}invoke name="
INVOKE_END = f"</{DSML}invoke>"
PARAMETER = f"<{DSML}parameter name="
VALUE_END = f"</{DSML}parameter>"

_INVOKE = re.compile(rf'\s*{INVOKE}"([^"]*)">')
_PARAMETER = re.compile(rf'\s*{PARAMETER}"([^"]*)" string="(true|false)">')
_INVOKE_END = re.compile(rf"\s*{INVOKE_END}")
_BLOCK_END = {
    start: re.compile(rf"\s*</{DSML}{block}>") for start, block in zip(STARTS, BLOCKS, strict=True)
}


def _value(raw: str, string: bool) -> Any:
    if string:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return xml_value(raw)  # a scalar written bare (the prompt allows it): best reading


def _arguments(params: dict[str, Any], *, complete: bool) -> str:
    # As xmlcalls.xml_arguments: while the call is written, the completed parameters without
    # the closing brace (a prefix of the final text).
    text = json.dumps(params, ensure_ascii=False, separators=(", ", ": "))
    return text if complete else text[:-1]


def _may_be_string(schema: Any) -> bool:
    """Whether a parameter is written as a raw string (string="true"): llama.cpp's
    may_be_string, a schema that says no type, or lists "string" among its types."""
    if not isinstance(schema, Mapping):
        return True
    if "enum" in schema:
        return all(isinstance(item, str) for item in schema["enum"])
    declared = schema.get("type")
    if declared is None:
        return "$ref" not in schema and not {"properties", "items"} & schema.keys()
    types = {declared} if isinstance(declared, str) else set(declared)
    return "string" in types


@dataclass(frozen=True)
class DeepseekDsmlFormat:
    """DSML calls whose grammar writes the `block` its template names (either is read)."""

    name: str
    block: str
    markers: tuple[str, ...] = (
        *STARTS,
        *(f"</{DSML}{block}>" for block in BLOCKS),
        INVOKE,
        INVOKE_END,
        PARAMETER,
        VALUE_END,
    )

    def matches(self, template: str) -> bool:
        # llama.cpp's test (common_chat_try_specialized_template): the template sets
        # dsml_token; V3.2's names its block function_calls, V4's tool_calls.
        if "dsml_token" not in template or "DSML" not in template:
            return False
        return ("function_calls" in template) == (self.block == "function_calls")

    def parse(self, text: str, *, partial: bool) -> Parsed:
        # Content and block are apart by "\n\n" in the template: read_sections drops the
        # whitespace next to a block (and holds it back while streaming).
        def read(text: str, at: int, marker: str) -> tuple[list[ParsedCall], int | None]:
            return self._read(text, at - len(marker), partial)

        return read_sections(text, STARTS, read, partial=partial)

    def _read(self, text: str, at: int, partial: bool) -> tuple[list[ParsedCall], int | None]:
        start = next(s for s in STARTS if text.startswith(s, at))
        at += len(start)
        calls: list[ParsedCall] = []
        while (invoke := _INVOKE.match(text, at)) is not None:
            name = invoke.group(1).strip()
            params: dict[str, Any] = {}
            at = invoke.end()
            while (param := _PARAMETER.match(text, at)) is not None:
                close = text.find(VALUE_END, param.end())
                if close < 0:
                    break
                string = param.group(2) == "true"
                params[param.group(1)] = _value(text[param.end() : close], string)
                at = close + len(VALUE_END)
            end = _INVOKE_END.match(text, at)
            if end is None:
                calls.append(ParsedCall(name, _arguments(params, complete=False), complete=False))
                return unfinished(calls, partial=partial, why=f"the call of {name} is not closed")
            calls.append(ParsedCall(name, _arguments(params, complete=True)))
            at = end.end()
        block = _BLOCK_END[start].match(text, at)
        if block is not None:
            return calls, block.end()
        if not partial and calls and not text[at:].strip():
            return calls, len(text)  # the output ended before the block's end: calls are whole
        if not partial and not calls:
            raise MalformedCall(f"{start} holds no call")
        return unfinished(calls, partial=partial, why=f"{start} is not closed")

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        invokes = tool_rules(builder, tools, lambda tool, prefix: _invoke(builder, tool, prefix))
        builder.rule("invoke", invokes)
        calls = "invoke+" if parallel else "invoke"
        begin, end = f"<{DSML}{self.block}>", f"</{DSML}{self.block}>"
        root = f"{gbnf_literal(begin + chr(10))} {calls} {gbnf_literal(end)}"
        return ToolGrammar(builder.build(root), triggers=(regex_literal(begin),))


def _invoke(builder: GrammarBuilder, tool: Tool, prefix: str) -> str:
    """GBNF of one call of `tool`: its required parameters in the schema's order, then any
    of its optional ones (as llama.cpp's parser), each followed by a newline as the template
    writes them."""
    opening = gbnf_literal(f'{INVOKE}"{tool.name}">\n')
    schema = tool.parameters if isinstance(tool.parameters, Mapping) else {}
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        value = gbnf_until(VALUE_END)
        free = f'{gbnf_literal(PARAMETER)} "\\"" [^"]+ "\\" string=\\"true\\">" {value}'
        body = f"({free} {gbnf_literal(VALUE_END + chr(10))})*"
        return f"{opening} {body} {gbnf_literal(INVOKE_END + chr(10))}"
    required = set(schema.get("required") or ())
    needed: list[str] = []
    optional: list[str] = []
    for key, sub in properties.items():
        name = f"{prefix}-{rule_name(str(key))}"
        string = _may_be_string(sub)
        if string or "$ref" in json.dumps(sub):
            value = value_expression(builder, sub, f"{name}-value", VALUE_END)
        else:
            value = builder.json_rule(sub, f"{name}-value")
        head = f'{PARAMETER}"{key}" string="{"true" if string else "false"}">'
        builder.rule(name, f"{gbnf_literal(head)} {value} {gbnf_literal(VALUE_END + chr(10))}")
        (needed if key in required else optional).append(name)
    tail = f"({' | '.join(optional)})*" if optional else ""
    params = " ".join([*needed, tail]).strip() or '""'
    return f"{opening} {params} {gbnf_literal(INVOKE_END + chr(10))}"
