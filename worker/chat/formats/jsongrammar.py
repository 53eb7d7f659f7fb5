"""The grammars of calls written as JSON (the families of jsoncalls): call objects with each
tool's name and arguments, calls of the family's own markup around the arguments, and how
several are joined."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from llorch.worker.chat.formats.base import GrammarBuilder, gbnf_literal, regex_literal, rule_name
from llorch.worker.chat.types import Tool

# Whitespace the wrapping rules allow (between markers and objects, between object fields):
# bounded, so a forced grammar cannot loop on it; trigger patterns use the same class so that
# whatever text a trigger matched is accepted when the grammar replays it.
WS_RULE = "[ \\t\\n]{0,20}"
WS_REGEX = "[ \\t\\n]{0,20}"


def call_objects(
    builder: GrammarBuilder,
    tools: Sequence[Tool],
    *,
    name_key: str = "name",
    arguments_key: str = "arguments",
    head: str = "",
    fields_before: Sequence[tuple[str, str]] = (),
    fields_after: Sequence[tuple[str, str]] = (),
) -> str:
    """A rule for one of the tools' call objects, `{"name": "<tool>", "arguments": {...}}`
    (keys as the family names them): `head` is raw GBNF right after the brace, the fields are
    (key, GBNF value) pairs."""
    ws = builder.rule("ws", WS_RULE)

    def call(tool: Tool, index: int) -> str:
        fields = [
            *fields_before,
            (name_key, gbnf_literal(json.dumps(tool.name, ensure_ascii=False))),
            (arguments_key, builder.arguments_rule(tool)),
            *fields_after,
        ]
        pairs = [f'{json_key(key)} {ws} ":" {ws} {value}' for key, value in fields]
        body = f' {ws} "," {ws} '.join(pairs)
        rule = f'"{{" {ws} {head}{body} {ws} "}}"'
        return builder.rule(f"call-{index}-{rule_name(tool.name)}", rule)

    return _any_of(builder, tools, call)


def any_call(
    builder: GrammarBuilder, tools: Sequence[Tool], body: Callable[[Tool, str], str]
) -> str:
    """A rule for one of the tools' calls, each a rule of its own: `body(tool, the rule of its
    arguments)`."""
    return _any_of(
        builder,
        tools,
        lambda tool, index: builder.rule(f"call-{index}", body(tool, builder.arguments_rule(tool))),
    )


def json_key(key: str) -> str:
    return gbnf_literal(json.dumps(key))


def _any_of(
    builder: GrammarBuilder, tools: Sequence[Tool], rule: Callable[[Tool, int], str]
) -> str:
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    return builder.rule("tool-call", " | ".join(rule(tool, i) for i, tool in enumerate(tools)))


def repeated(call: str, separator: str, *, parallel: bool) -> str:
    """One call, or several separated by `separator` (GBNF) when `parallel`."""
    return f"{call} ({separator} {call})*" if parallel else call


def name_pattern(tools: Sequence[Tool]) -> str:
    """A regex alternation of the tools' names (for trigger patterns)."""
    return "(?:" + "|".join(regex_literal(tool.name) for tool in tools) + ")"
