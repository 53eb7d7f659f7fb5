"""The generic format, for templates that take tools in none of the families' formats (or take
none): the model answers one JSON object, either calls or a response (llama.cpp's generic
format, common/chat.cpp),

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    {"response": "It is sunny."}

An answer that is not such an object is content as written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    MalformedCall,
    Parsed,
    ToolGrammar,
    skip_space,
)
from llorch.worker.chat.formats.jsoncalls import (
    WS_REGEX,
    CallKeys,
    any_of,
    call_object_rule,
    json_key,
    read_array,
    read_object,
    read_string,
    repeated,
)
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
        call = any_of(builder, tools, lambda tool, i: call_object_rule(builder, tool, i))
        calls = repeated(call, 'ws "," ws', parallel=parallel)
        root = f'"{{" ws {json_key(CALLS)} ws ":" ws "[" ws {calls} ws "]" ws "}}"'
        trigger = f'^\\s*(\\{{{WS_REGEX}"{CALLS}")'
        return ToolGrammar(gbnf=builder.build(root), triggers=(trigger,))


def _response(text: str, at: int, *, partial: bool) -> str:
    """The "response" string, decoded (partial: as far as it is written)."""
    if at >= len(text):
        return ""
    if text[at] != '"':
        return "" if partial else text  # not a string: the whole answer is the content
    value, _ = read_string(text, at)
    if value is not None:
        return value
    if not partial:
        return text
    # Decode what is written: close the string, cutting back over an unfinished escape.
    body = text[at:]
    for cut in range(len(body), max(len(body) - 7, 0), -1):
        try:
            decoded: str = json.loads(body[:cut] + '"')
        except json.JSONDecodeError:
            continue
        return decoded.rstrip()
    return ""


FORMAT = GenericFormat()
