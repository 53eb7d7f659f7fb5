"""LFM2 and LFM2.5 (Liquid AI): the calls are a Python list of calls between tool-call tokens,

    <|tool_call_start|>[get_weather(city='Paris', days=3), search(query="x y")]<|tool_call_end|>

(LFM2.5-8B-A1B.jinja renders a string argument in single quotes, a mapping with `tojson`,
anything else with Jinja's `string`, i.e. as Python writes it; llama.cpp's
common/parsers/lfm2.cpp reads Python values and JSON's true/false/null alike.) The grammar
writes each argument as JSON, which reads the same.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    MalformedCall,
    Parsed,
    ParsedCall,
    ToolGrammar,
    gbnf_literal,
    regex_literal,
    rule_name,
    skip_space,
    tool_rules,
)
from llorch.worker.chat.formats.sections import parse_call_lists
from llorch.worker.chat.types import Tool

START = "<|tool_call_start|>"
END = "<|tool_call_end|>"
# llama.cpp's detection (is_lfm2_template, and LFM2.5-Instruct's plain "List of tools: [").
SIGNS = ("<|tool_list_start|>", START, "List of tools: [")

_NAME = re.compile(r"\s*([A-Za-z_][\w.\-]*)\(")
_KEY = re.compile(r"\s*([A-Za-z_]\w*)\s*=")
_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_KEY_SO_FAR = re.compile(r"\s*[A-Za-z_]\w*\s*")


def _value_end(text: str, at: int) -> int | None:
    """The index after the Python or JSON value starting at `at`: where a top-level `,` or
    `)` comes outside strings and brackets; None when the text ends first."""
    depth, quote, i = 0, "", at
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "[{(":
            depth += 1
        elif c in "]})":
            if depth == 0:
                return i if c == ")" else None
            depth -= 1
        elif c == "," and depth == 0:
            return i
        i += 1
    return None


def _literal(node: ast.AST) -> Any:
    """A Python literal's value, JSON's true/false/null allowed as names."""
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.Constant) and isinstance(
        node.value, (str, int, float, bool, type(None))
    ):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        return {_key(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True)}
    raise MalformedCall(f"an argument is not a Python or JSON value: {ast.dump(node)[:60]}")


def _key(node: ast.AST | None) -> str:
    value = _literal(node) if node is not None else None
    if not isinstance(value, str):
        raise MalformedCall("an argument's object has a key that is not a string")
    return value


def _value(raw: str) -> Any:
    text = raw.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return _literal(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise MalformedCall(f"an argument is not a Python or JSON value: {text[:60]!r}") from None


def _arguments(params: dict[str, Any], *, complete: bool) -> str:
    text = json.dumps(params, ensure_ascii=False, separators=(", ", ": "))
    return text if complete else text[:-1]  # a prefix of the final text while being written


def _read_call(text: str, at: int) -> tuple[ParsedCall | None, int | None]:
    """The call `name(k=v, ...)` from `at`: (the call so far, the index after its `)`);
    (None, None) while its name is being written."""
    head = _NAME.match(text, at)
    if head is None:
        return None, None
    name = head.group(1)
    params: dict[str, Any] = {}
    i = head.end()
    while True:
        i = skip_space(text, i)
        if text.startswith(")", i):
            return ParsedCall(name, _arguments(params, complete=True)), i + 1
        key = _KEY.match(text, i)
        if key is None:
            if _KEY_SO_FAR.fullmatch(text, i) is None and i < len(text):
                raise MalformedCall(f"the call of {name} is not name(key=value, ...)")
            break  # the text ends inside the key
        end = _value_end(text, skip_space(text, key.end()))
        if end is None:
            break
        params[key.group(1)] = _value(text[key.end() : end])
        i = end + 1 if text[end] == "," else end
    return ParsedCall(name, _arguments(params, complete=False), complete=False), None


class Lfm2Format:
    name = "lfm2"
    markers = (START, END)

    def matches(self, template: str) -> bool:
        return any(sign in template for sign in SIGNS)

    def parse(self, text: str, *, partial: bool) -> Parsed:
        return parse_call_lists(text, START, END, _read_call, partial=partial, kind="list")

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        calls = tool_rules(builder, tools, lambda tool, prefix: _call(builder, tool, prefix))
        builder.rule("call", calls)
        several = 'call (", " call)*' if parallel else "call"
        root = f"{gbnf_literal(START + '[')} {several} {gbnf_literal(']' + END)}"
        return ToolGrammar(builder.build(root), triggers=(regex_literal(START),))


def _call(builder: GrammarBuilder, tool: Tool, prefix: str) -> str:
    """`name(k=v, ...)`: the required arguments in the schema's order, then any optional
    ones, each value JSON valid under its schema."""
    opening = gbnf_literal(f"{tool.name}(")
    schema = tool.parameters if isinstance(tool.parameters, Mapping) else {}
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        value = builder.json_rule(None, f"{prefix}-value")
        pair = builder.rule(f"{prefix}-arg", f'[A-Za-z_] [A-Za-z0-9_]* "=" {value}')
        return f'{opening} ({pair} (", " {pair})*)? ")"'
    required = set(schema.get("required") or ())
    needed: list[str] = []
    optional: list[str] = []
    for key, sub in properties.items():
        name = f"{prefix}-{rule_name(str(key))}"
        value = builder.json_rule(sub if isinstance(sub, Mapping) else None, f"{name}-value")
        builder.rule(name, f"{gbnf_literal(str(key) + '=')} {value}")
        (needed if key in required else optional).append(name)
    any_optional = "(" + " | ".join(optional) + ")" if optional else ""
    if needed:
        body = ' ", " '.join(needed)
        if optional:
            body += f' (", " {any_optional})*'
    elif optional:
        body = f'({any_optional} (", " {any_optional})*)?'
    else:
        body = ""
    return f'{opening} {body} ")"'.replace("  ", " ")


FORMAT = Lfm2Format()
