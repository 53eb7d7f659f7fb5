"""Gemma 4: each call between its own tokens, the arguments in Gemma's notation: JSON-like,
with bare keys and strings between <|"|> tokens.

    <|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>

(google-gemma-4-31B-it.jinja's format_argument: keys bare and in sorted order, strings quoted
with <|"|>, numbers, booleans, lists and objects as in JSON, no spaces; calls follow each other
directly.) Thinking comes in a channel, `<|channel>thought\\n...<channel|>`: read here as the
reasoning, as llama.cpp's common/parsers/gemma4.cpp does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from llorch.worker.backend.grammar import BOUND_KEYS, integer_bounds
from llorch.worker.backend.integer_range import integer_range
from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    Parsed,
    ParsedCall,
    ToolGrammar,
    gbnf_literal,
    gbnf_until,
    held_back,
    object_text,
    regex_literal,
    rule_name,
    tool_rules,
)
from llorch.worker.chat.formats.sections import parse_sections, unfinished
from llorch.worker.chat.types import Tool

CALL_START = "<|tool_call>"
CALL_END = "<tool_call|>"
QUOTE = '<|"|>'
THOUGHT_START = "<|channel>"
THOUGHT_END = "<channel|>"

_HEADER = re.compile(r"\s*call:([^{<]*)\{")
_CALL_END = re.compile(r"\s*" + re.escape(CALL_END))
_LITERAL = re.compile(r"[^,:{}\[\]\s<]+")


def _json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def gemma_to_json(text: str, at: int) -> tuple[str, int | None]:
    """Arguments in Gemma's notation from `at` (their "{") as JSON text: (the text so far,
    the index after the closing brace, or None while it is not written yet). Each piece read
    only extends the JSON, so the text of a partial read is a prefix of the final one."""
    out: list[str] = []
    stack: list[str] = []
    key_next = False
    while at < len(text):
        char = text[at]
        if text.startswith(QUOTE, at):
            close = text.find(QUOTE, at + len(QUOTE))
            if close < 0:  # a string still being written
                inner = text[at + len(QUOTE) :]
                out.append(_json_string(inner[: held_back(inner, (QUOTE,))])[:-1])
                break
            out.append(_json_string(text[at + len(QUOTE) : close]))
            at, key_next = close + len(QUOTE), False
        elif char in "{[":
            stack.append(char)
            out.append(char)
            at, key_next = at + 1, char == "{"
        elif char in "}]":
            out.append(char)
            at += 1
            if stack:
                stack.pop()
            if not stack:
                return "".join(out), at
        elif char in ",:":
            out.append(char)
            at, key_next = at + 1, char == "," and stack[-1:] == ["{"]
        elif char in " \t\r\n":
            at += 1
        elif key_next:  # a bare key, up to its colon
            colon = text.find(":", at)
            if colon < 0:
                break
            out.append(_json_string(text[at:colon].strip()))
            at, key_next = colon, False
        else:  # a number, true, false or null, as in JSON
            literal = _LITERAL.match(text, at)
            if literal is None:
                break  # not the notation: the final check refuses it
            out.append(literal.group())
            at = literal.end()
    return "".join(out), None


class Gemma4Format:
    name = "gemma4"
    markers = (CALL_START, CALL_END, QUOTE, THOUGHT_START, THOUGHT_END)

    def matches(self, template: str) -> bool:
        return f"'{CALL_START}call:'" in template  # as llama.cpp's chat.cpp detects it

    def parse(self, text: str, *, partial: bool) -> Parsed:
        visible, reasoning = _thoughts(text, partial=partial)
        parsed = parse_sections(visible, (CALL_START,), partial=partial, read=self._read)
        return Parsed(parsed.content, parsed.calls, reasoning)

    def _read(self, text: str, at: int, partial: bool) -> tuple[list[ParsedCall], int | None]:
        header = _HEADER.match(text, at + len(CALL_START))
        if header is None:
            return unfinished([], partial=partial, why="a <|tool_call> without call:NAME{")
        name = header.group(1).strip()
        arguments, end = gemma_to_json(text, header.end() - 1)
        if end is None:
            call = ParsedCall(name, arguments, complete=False)
            return unfinished([call], partial=partial, why=f"the call of {name} is not closed")
        if not partial:
            object_text(arguments, what=f"the call of {name}")
        closing = _CALL_END.match(text, end)
        if closing is None and (partial or text[end:].strip()):
            why = f"the call of {name} is not closed"
            return unfinished([ParsedCall(name, arguments)], partial=partial, why=why)
        return [ParsedCall(name, arguments)], len(text) if closing is None else closing.end()

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        builder.rule("g-string", f"{gbnf_literal(QUOTE)} {gbnf_until(QUOTE)} {gbnf_literal(QUOTE)}")
        # Digits bounded as llama.cpp's JSON converter bounds them (16 integral, 16 fraction
        # digits): a small model under the grammar otherwise writes digits until max_tokens.
        builder.rule("g-integer", '"-"? [0-9]{1,16}')
        builder.rule("g-number", '"-"? [0-9]{1,16} ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?')
        builder.rule("g-entry", '[^:{}<,]+ ":" g-value')
        builder.rule("g-object", '"{" (g-entry ("," g-entry)*)? "}"')
        builder.rule("g-array", '"[" (g-value ("," g-value)*)? "]"')
        builder.rule(
            "g-value", 'g-string | g-number | "true" | "false" | "null" | g-object | g-array'
        )

        def call(tool: Tool, prefix: str) -> str:
            schema = dict(tool.parameters or {})
            schema.setdefault("type", "object")
            return f"{gbnf_literal(tool.name)} {_value(builder, schema, prefix + '-args')}"

        calls = tool_rules(builder, tools, call)
        builder.rule("call", f'"{CALL_START}call:" ({calls}) "{CALL_END}"')
        return ToolGrammar(
            builder.build("call+" if parallel else "call"), (regex_literal(CALL_START),)
        )


def _value(builder: GrammarBuilder, schema: Any, name: str) -> str:
    """GBNF of a value valid under `schema` in Gemma's notation (for what this does not
    follow, e.g. references or combinations, any value)."""
    if not isinstance(schema, Mapping) or "$ref" in json.dumps(schema):
        return "g-value"
    enum = schema.get("enum")
    if enum and all(isinstance(item, str) for item in enum):
        choices = " | ".join(gbnf_literal(item) for item in enum)
        return f"{gbnf_literal(QUOTE)} ({choices}) {gbnf_literal(QUOTE)}"
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [_value(builder, {**schema, "type": k}, f"{name}-{k}") for k in kind]
        return "(" + " | ".join(kinds) + ")"
    if kind == "integer" and any(key in schema for key in BOUND_KEYS):
        # Its bounds, as the JSON grammars of the other families bound them (Gemma writes
        # integers as JSON does).
        return builder.rule(name, f"({integer_range(*integer_bounds(schema))})")
    simple = {"string": "g-string", "integer": "g-integer", "number": "g-number"}
    simple |= {"boolean": '("true" | "false")', "null": '"null"'}
    if kind in simple:
        return simple[kind]
    if kind == "array":
        item = _value(builder, schema.get("items"), f"{name}-item")
        return builder.rule(name, f'"[" ({item} ("," {item})*)? "]"')
    properties = schema.get("properties")
    if kind != "object" or not isinstance(properties, Mapping) or not properties:
        return "g-value" if kind != "object" else "g-object"
    # Keys in the template's order (dictsort: case-insensitive); each optional one may be
    # left out, so the object is one alternative per key it may start with.
    required = set(schema.get("required") or ())
    keys = sorted(properties, key=lambda k: str(k).lower())
    entries = []
    for key in keys:
        value = _value(builder, properties[key], f"{name}-{rule_name(str(key))}")
        entries.append(
            builder.rule(f"{name}-{rule_name(str(key))}-kv", f"{gbnf_literal(f'{key}:')} {value}")
        )
    starts = []
    for first, entry in enumerate(entries):
        rest = [
            f'"," {e}' if k in required else f'("," {e})?'
            for k, e in zip(keys[first + 1 :], entries[first + 1 :], strict=True)
        ]
        starts.append(" ".join([entry, *rest]))
        if keys[first] in required:
            break
    else:
        starts.append('""')
    return builder.rule(name, f'"{{" ({" | ".join(starts)}) "}}"')


def _thoughts(text: str, *, partial: bool) -> tuple[str, str]:
    """(the text outside thought channels, the thinking inside them). A stray <channel|>
    (the model closes a channel it did not open) is dropped."""
    visible, reasoning = [], []
    at = 0
    while (start := text.find(THOUGHT_START, at)) >= 0:
        visible.append(text[at:start].replace(THOUGHT_END, ""))
        end = text.find(THOUGHT_END, start)
        inner = text[start + len(THOUGHT_START) : len(text) if end < 0 else end]
        if end < 0 and partial:
            inner = inner[: held_back(inner, (THOUGHT_END,))]
        reasoning.append(_thought_text(inner))
        if end < 0:
            return "".join(visible), "".join(reasoning)
        at = end + len(THOUGHT_END)
    rest = text[at:]
    if partial:
        rest = rest[: held_back(rest, (THOUGHT_START, THOUGHT_END))]
    visible.append(rest.replace(THOUGHT_END, ""))
    return "".join(visible), "".join(reasoning)


def _thought_text(inner: str) -> str:
    # The channel is named first: "thought", then a newline.
    if "thought".startswith(inner):
        return ""
    return inner.removeprefix("thought").lstrip()


FORMAT = Gemma4Format()
