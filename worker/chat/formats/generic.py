"""The generic format, for templates that take tools in none of the families' formats (or take
none): the model answers one JSON object, either calls or a response (llama.cpp's generic
format, common/chat.cpp),

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    {"response": "It is sunny."}

An answer that is not such an object is content as written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    MalformedCall,
    Parsed,
    ToolGrammar,
    skip_space,
)
from llorch.worker.chat.formats.jsoncalls import CallKeys, read_array, read_object, read_string
from llorch.worker.chat.formats.jsongrammar import WS_REGEX, call_objects, json_key, repeated
from llorch.worker.chat.types import Tool

KEYS = CallKeys(names=("name",), arguments=("arguments",), ids=("id",))
CALLS, CALL, RESPONSE = "tool_calls", "tool_call", "response"


@dataclass(frozen=True)
class GenericFormat:
    name: str = "generic"
    markers: tuple[str, ...] = ()

    def matches(self, template: str) -> bool:
        return False  # the fallback: chosen when no family matches

    def parse(self, text: str, *, partial: bool) -> Parsed:
        start = skip_space(text, 0)
        if not text.startswith("{", start):
            return Parsed(text.rstrip() if partial else text)
        i = skip_space(text, start + 1)
        if i == len(text):
            return Parsed("" if partial else text)
        try:
            key, i = read_string(text, i)
        except MalformedCall:
            return Parsed(text)
        if key is None:
            return Parsed("" if partial else text)  # the first key is still being written
        i = skip_space(text, i)
        if i < len(text) and text[i] == ":":
            i = skip_space(text, i + 1)
        elif i < len(text) or not partial:
            return Parsed(text)
        if key == CALLS:
            calls, _ = read_array(text, i, KEYS, partial=partial)
            return Parsed("", tuple(calls))
        if key == CALL:
            call = read_object(text, i, KEYS, partial=partial).call(partial=partial)
            return Parsed("", () if call is None else (call,))
        if key == RESPONSE:
            return Parsed(_response(text, i, partial=partial))
        return Parsed("" if partial else text)  # some other JSON: content once complete

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        call = call_objects(builder, tools)
        calls = repeated(call, 'ws "," ws', parallel=parallel)
        root = f'"{{" ws {json_key(CALLS)} ws ":" ws "[" ws {calls} ws "]" ws "}}"'
        trigger = f'^\\s*(\\{{{WS_REGEX}"{CALLS}")'
        return ToolGrammar(gbnf=builder.build(root), triggers=(trigger,))


def _response(text: str, at: int, *, partial: bool) -> str:
    """The "response" string, decoded as far as it is written (an answer cut off by the token
    limit is still what the model wrote). A partial parse stops before an escape still being
    written and holds back trailing whitespace."""
    if at >= len(text):
        return ""
    if text[at] != '"':
        return "" if partial else text  # not a string: the whole answer is the content
    out: list[str] = []
    i = at + 1
    while i < len(text) and text[i] != '"':
        if text[i] != "\\":
            out.append(text[i])
            i += 1
            continue
        escape = text[i + 1 : i + 2]
        if escape != "u":
            if not escape:
                break
            out.append(ESCAPES.get(escape, escape))
            i += 2
            continue
        code, i = _unicode_escape(text, i)
        if code is None:
            break
        out.append(code)
    decoded = "".join(out)
    return decoded.rstrip() if partial else decoded


ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unicode_escape(text: str, at: int) -> tuple[str | None, int]:
    """The character of the \\uXXXX escape at `at` (a surrogate pair taken whole) and the index
    after it; None while it is still being written."""
    digits = text[at + 2 : at + 6]
    if not HEX4.fullmatch(digits):
        if len(text) < at + 6:
            return None, at
        return "u", at + 2  # not an escape after all: the "u" as written
    value = int(digits, 16)
    if 0xD800 <= value < 0xDC00:
        low = text[at + 6 : at + 12]
        if len(low) < 6 and LOW_HALF_START.fullmatch(low):
            return None, at  # the low half may still come
        if low.startswith("\\u") and HEX4.fullmatch(low[2:]):
            second = int(low[2:], 16)
            if 0xDC00 <= second < 0xE000:
                return chr(0x10000 + ((value - 0xD800) << 10) + (second - 0xDC00)), at + 12
    if 0xD800 <= value < 0xE000:
        return "\ufffd", at + 6  # a lone surrogate is not text
    return chr(value), at + 6


HEX4 = re.compile(r"[0-9a-fA-F]{4}")
LOW_HALF_START = re.compile(r"(?:\\(?:u[0-9a-fA-F]{0,3})?)?")


FORMAT = GenericFormat()
