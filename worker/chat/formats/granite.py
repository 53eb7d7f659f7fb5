"""Granite 3.x: the calls as one JSON list after the <|tool_call|> token.

    <|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]

(ibm-granite-granite-3.3-2B-Instruct.jinja's system prompt: "respond only with <|tool_call|>
followed by a JSON list of tools used".) Granite 4.0 and 4.1 are not this family: their
templates (ibm-granite-granite-4.0.jinja, -4.1.jinja) write each call as
`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`, exactly Hermes' syntax, and
contain no <|tool_call|>, so they are left to the Hermes format.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    Parsed,
    ParsedCall,
    ToolGrammar,
    gbnf_literal,
    json_value_end,
    object_text,
    partial_arguments,
    regex_literal,
    skip_space,
    tool_rules,
)
from llorch.worker.chat.formats.sections import parse_sections, unfinished
from llorch.worker.chat.types import Tool

CALL_TOKEN = "<|tool_call|>"


def _call(text: str, at: int, partial: bool) -> tuple[ParsedCall | None, int | None]:
    """The call object at `at` (its "{"): the call once its name is read (None before), and
    the index after the object (None while it is still being written, or is not a call)."""
    name: str | None = None
    arguments: str | None = None
    at = skip_space(text, at + 1)
    closed = None
    while at < len(text):
        if text[at] == "}":
            closed = at + 1
            break
        if text[at] == ",":
            at = skip_space(text, at + 1)
            continue
        key_end = json_value_end(text, at)
        colon = skip_space(text, key_end) if key_end is not None else len(text)
        if key_end is None or not text.startswith(":", colon):
            break
        key = json.loads(text[at:key_end])
        at = skip_space(text, colon + 1)
        value_end = json_value_end(text, at)
        if key == "arguments":
            arguments = text[at:value_end] if value_end else partial_arguments(text[at:])
        if value_end is None:
            break
        if key == "name":
            name = json.loads(text[at:value_end])
        at = value_end
    if not isinstance(name, str):
        return None, closed
    if closed is None:  # still being written (the final read refuses it)
        return ParsedCall(name, arguments or "", complete=False), None
    arguments = "{}" if arguments is None else arguments
    if not partial:
        object_text(arguments, what=f"the call of {name}")
    return ParsedCall(name, arguments), closed


class GraniteFormat:
    name = "granite"
    markers = (CALL_TOKEN,)

    def matches(self, template: str) -> bool:
        return CALL_TOKEN in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        return parse_sections(text, (CALL_TOKEN,), partial=partial, read=self._read)

    def _read(self, text: str, at: int, partial: bool) -> tuple[list[ParsedCall], int | None]:
        at = skip_space(text, at + len(CALL_TOKEN))
        single = text.startswith("{", at)  # one call without its list
        if not single and not text.startswith("[", at):
            return unfinished([], partial=partial, why=f"{CALL_TOKEN} without a JSON list")
        calls: list[ParsedCall] = []
        at = at if single else skip_space(text, at + 1)
        while at < len(text):
            if text[at] == "]" and not single:
                return calls, at + 1
            if text[at] == "," and calls and not single:
                at = skip_space(text, at + 1)
                continue
            if text[at] != "{":
                break
            call, end = _call(text, at, partial)
            if call is not None:
                calls.append(call)
            if end is None:
                break
            if call is None:
                return unfinished(calls, partial=partial, why="a call without a name")
            at = end if single else skip_space(text, end)
            if single:
                return calls, end
        if not partial and calls and calls[-1].complete and not text[at:].strip():
            return calls, len(text)  # the output ended before the list's "]"
        return unfinished(calls, partial=partial, why=f"the list after {CALL_TOKEN} is not closed")

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()

        def call(tool: Tool, _: str) -> str:
            head = gbnf_literal(f'{{"name": "{tool.name}", "arguments": ')
            return f'{head} {builder.arguments_rule(tool)} "}}"'

        builder.rule("call", tool_rules(builder, tools, call))
        calls = 'call (", " call)*' if parallel else "call"
        root = f'{gbnf_literal(CALL_TOKEN)} "[" {calls} "]"'
        return ToolGrammar(builder.build(root), triggers=(regex_literal(CALL_TOKEN),))


FORMAT = GraniteFormat()
