"""What the families that write each parameter as an XML-like element share (Qwen3-Coder and
Qwen 3.5, GLM 4.5-4.7, MiniMax M2): values are raw text, turned into JSON here, and arguments
stream as the object of the parameters completed so far.

The templates write a string parameter as it is and any other value with `tojson` (e.g.
Qwen3-Coder.jinja: `args_value | tojson if args_value is mapping or ... else args_value |
string`). The parser does not know the tools' schemas, so a value that reads as a JSON number,
boolean, null, object or array becomes that, and anything else stays a string (llama.cpp and
vLLM's qwen3coder parser type values by the schema instead: a string parameter whose text
happens to read as a number is the one case that differs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    ParsedCall,
    gbnf_literal,
    gbnf_until,
    rule_name,
    tool_rules,
)
from llorch.worker.chat.types import Tool


def _no_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON


def xml_value(raw: str) -> Any:
    """A parameter's value from its text: JSON other than a string as that, else the text."""
    text = raw.strip()
    if text and text[0] in "{[-0123456789tfn":
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except ValueError:
            return raw
        if not isinstance(value, str):
            return value
    return raw


def xml_arguments(params: Sequence[tuple[str, str]], *, complete: bool) -> str:
    """The JSON text of a call's parameters (compact, as the other families' arguments). While
    the call is still being written, the parameters completed so far without the closing
    brace: a prefix of the final text, since each parameter added only extends it."""
    value = {key: xml_value(value) for key, value in params}
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if complete else text[:-1]


def read_xml_call(
    text: str,
    at: int,
    name: str,
    *,
    parameter: re.Pattern[str],
    value_end: str,
    call_end: re.Pattern[str],
    value: Callable[[str], str] = lambda raw: raw,
) -> tuple[ParsedCall, int | None]:
    """The call of `name` whose parameters start at `at`: each opened by `parameter` (its
    name the first group) and its raw text running to `value_end` (`value` takes off what the
    syntax writes around it), then `call_end`. (The call, the index after `call_end`); until
    `call_end` comes, the call is unfinished with the parameters completed so far, and None."""
    params: list[tuple[str, str]] = []
    while (start := parameter.match(text, at)) is not None:
        close = text.find(value_end, start.end())
        if close < 0:
            break
        params.append((start.group(1).strip(), value(text[start.end() : close])))
        at = close + len(value_end)
    end = call_end.match(text, at)
    if end is None:
        return ParsedCall(name, xml_arguments(params, complete=False), complete=False), None
    return ParsedCall(name, xml_arguments(params, complete=True)), end.end()


# -- grammar -----------------------------------------------------------------------------------


def value_expression(builder: GrammarBuilder, schema: Any, rule: str, close: str) -> str:
    """GBNF of a parameter value written as text and followed by `close`: free text for strings
    (and schemas that say nothing), the alternatives of a string enum, else the JSON rule of
    the parameter's schema (llama.cpp's parsers/qwen3-coder.cpp does the same)."""
    if not isinstance(schema, Mapping) or "$ref" in json.dumps(schema):
        return gbnf_until(close)  # a reference into the whole schema: left unconstrained
    enum = schema.get("enum")
    if enum and all(isinstance(item, str) for item in enum):
        return "(" + " | ".join(gbnf_literal(item) for item in enum) + ")"
    declared = schema.get("type")
    types = {declared} if isinstance(declared, str) else set(declared or ())
    if not types or "string" in types:
        return gbnf_until(close)
    return builder.json_rule(schema, rule)


# A parameter of the family's syntax from the GBNF of its name and of its value.
ParameterSyntax = Callable[[str, str], str]


def xml_calls(
    builder: GrammarBuilder,
    tools: Sequence[Tool],
    *,
    parameter: ParameterSyntax,
    close: str,
    any_name: str,
    call: Callable[[Tool, str], str],
) -> str:
    """The alternatives of the tools' calls, a rule each: `call(tool, GBNF of its parameters)`,
    each parameter as `parameter` writes it, its value followed by `close`."""

    def body(tool: Tool, prefix: str) -> str:
        return call(tool, _parameters(builder, tool, prefix, parameter, close, any_name))

    return tool_rules(builder, tools, body)


def _parameters(
    builder: GrammarBuilder,
    tool: Tool,
    prefix: str,
    parameter: ParameterSyntax,
    close: str,
    any_name: str,
) -> str:
    """GBNF of a tool's parameters: the required ones in the schema's order, then any of the
    optional ones; any names (`any_name`) with free values when the schema lists none."""
    schema = tool.parameters if isinstance(tool.parameters, Mapping) else {}
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        return f"({parameter(any_name, gbnf_until(close))})*"
    required = set(schema.get("required") or ())
    needed: list[str] = []
    optional: list[str] = []
    for key, sub in properties.items():
        name = f"{prefix}-{rule_name(str(key))}"
        value = value_expression(builder, sub, f"{name}-value", close)
        builder.rule(name, parameter(gbnf_literal(str(key)), value))
        (needed if key in required else optional).append(name)
    tail = f"({' | '.join(optional)})*" if optional else ""
    return " ".join([*needed, tail]).strip() or '""'
