"""Mistral Small 3.2, Ministral 3, Devstral: each call is `[TOOL_CALLS]NAME[ARGS]{...}`,

    [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}

Mistral Small 3.2's template also writes the call's id: `[TOOL_CALLS]NAME[CALL_ID]a1B2c3D4e[ARGS]
{...}` (9 alphanumerics). Ministral 3 Reasoning's [THINK]...[/THINK] is taken out before this
parse. Older Mistral models' JSON list after [TOOL_CALLS] (Mistral Nemo's form) is read too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    MalformedCall,
    Parsed,
    ParsedCall,
    ToolGrammar,
    gbnf_literal,
    json_arguments,
    regex_literal,
    skip_space,
)
from llorch.worker.chat.formats.jsoncalls import CallKeys, finished_call, read_array
from llorch.worker.chat.formats.jsongrammar import any_call, repeated
from llorch.worker.chat.formats.sections import read_sections
from llorch.worker.chat.types import Tool

START = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"
NAME = re.compile(r"[^\s\[\]]+")
JSON_KEYS = CallKeys(names=("name",), arguments=("arguments",), ids=("id",))


@dataclass(frozen=True)
class MistralSmallFormat:
    name: str = "mistral_small"
    markers: tuple[str, ...] = (START, CALL_ID, ARGS)

    def matches(self, template: str) -> bool:
        return START in template and ARGS in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        def section(text: str, at: int, _: str) -> tuple[list[ParsedCall], int | None]:
            i = skip_space(text, at)
            if text.startswith("[", i) and not text.startswith(ARGS, i):
                return read_array(text, i, JSON_KEYS, partial=partial)
            try:
                return _read_call(text, i, partial=partial)
            except MalformedCall:
                if not partial:
                    raise
                return [], None

        return read_sections(text, (START,), section, partial=partial)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        call_id = builder.rule("call-id", f"{gbnf_literal(CALL_ID)} [a-zA-Z0-9]{{9}}")

        def call(tool: Tool, arguments: str) -> str:
            return f"{gbnf_literal(tool.name)} {call_id}? {gbnf_literal(ARGS)} {arguments}"

        calls = any_call(builder, tools, call)
        tagged = builder.rule("tagged-call", f"{gbnf_literal(START)} {calls}")
        return ToolGrammar(
            gbnf=builder.build(repeated(tagged, "", parallel=parallel)),
            triggers=(regex_literal(START),),
        )


def _read_call(text: str, at: int, *, partial: bool) -> tuple[list[ParsedCall], int | None]:
    """`NAME[CALL_ID]ID[ARGS]{...}` from `at`: ([the call if its name is known], its end)."""
    args_at = text.find(ARGS, at)
    id_at = text.find(CALL_ID, at, args_at if args_at >= 0 else len(text))
    name_end = id_at if id_at >= 0 else args_at
    if name_end < 0:
        if partial:
            return [], None
        raise MalformedCall(f"{START} is not followed by NAME{ARGS}")
    name = text[at:name_end].strip()
    if not NAME.fullmatch(name):
        raise MalformedCall(f"not a tool name: {name!r}")
    call_id = None
    if id_at >= 0:
        if args_at < 0:
            if partial:
                return [ParsedCall(name, "", complete=False)], None
            raise MalformedCall(f"{CALL_ID} is not followed by {ARGS}")
        call_id = text[id_at + len(CALL_ID) : args_at].strip() or None
    what = f"the call of {name}"
    arguments, end = json_arguments(text, args_at + len(ARGS), partial=partial, what=what)
    if end is None:
        return [ParsedCall(name, arguments, call_id, complete=False)], None
    return [finished_call(name, arguments, call_id, partial=partial)], end


FORMAT = MistralSmallFormat()
