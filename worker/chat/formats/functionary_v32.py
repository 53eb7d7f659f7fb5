"""Functionary v3.2: the answer is blocks `>>>RECIPIENT\\nBODY`: `all` is text for the user, any
other recipient a call of that tool with JSON arguments,

    >>>all
    Let me check.>>>get_weather
    {"city": "Paris"}

Its generation prompt already ends with `>>>`, so the output starts with the first recipient.
A `python` call's body may be raw code (its code interpreter), read as {"code": ...}.
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
    held_back,
    json_arguments,
    skip_space,
)
from llorch.worker.chat.formats.jsoncalls import PYTHON, code_call, finished_call
from llorch.worker.chat.formats.jsongrammar import any_call, name_pattern, repeated
from llorch.worker.chat.formats.sections import join_content
from llorch.worker.chat.types import Tool

SEP = ">>>"
CONTENT = "all"
RECIPIENT = re.compile(r"[A-Za-z_][\w.-]*")


@dataclass(frozen=True)
class FunctionaryV32Format:
    name: str = "functionary_v32"
    markers: tuple[str, ...] = (SEP + CONTENT, SEP)

    def matches(self, template: str) -> bool:
        return SEP + CONTENT in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        pieces: list[str] = []
        calls: list[ParsedCall] = []
        at: int | None = len(SEP) if text.startswith(SEP) else 0
        first = True
        while at is not None:
            nl = text.find("\n", at)
            head = text[at:] if nl < 0 else text[at:nl]
            recipient = RECIPIENT.fullmatch(head) is not None
            if nl < 0 and partial and (recipient or not head):
                break  # the recipient may still be being written
            if nl < 0 and (not first or head in ("", CONTENT)):
                if not partial and head not in ("", CONTENT):
                    raise MalformedCall(f"{SEP}{head} has no arguments")
                break
            if nl >= 0 and head == CONTENT:
                at = _content(text, nl + 1, pieces, partial=partial)
            elif nl >= 0 and recipient:
                try:
                    at = _call(text, head, nl + 1, calls, partial=partial)
                except MalformedCall:
                    if not partial:
                        raise
                    break
                if at is not None and at < len(text) and not text.startswith(SEP, at):
                    at = _content(text, at, pieces, partial=partial)  # text after the JSON
            elif first:
                at = _content(text, at, pieces, partial=partial)  # text with no recipient
            elif partial:
                break
            else:
                raise MalformedCall(f"{SEP} is not followed by a recipient")
            if at is not None and text.startswith(SEP, at):
                at += len(SEP)
            first = False
        return Parsed(join_content(pieces or [""], partial=partial), tuple(calls))

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()

        def call(tool: Tool, arguments: str) -> str:
            return f"{gbnf_literal(tool.name + chr(10))} {arguments}"

        # The grammar starts at the recipient: forced, the prompt's ">>>" comes before it; lazy,
        # the triggers' group starts after the ">>>" (or at the start of the answer).
        root = repeated(any_call(builder, tools, call), gbnf_literal(SEP), parallel=parallel)
        names = name_pattern(tools)
        return ToolGrammar(
            gbnf=builder.build(root),
            triggers=(f"^({names}\\n)", f"{SEP}({names}\\n)"),
        )


def _content(text: str, at: int, pieces: list[str], *, partial: bool) -> int | None:
    """Adds the text from `at` to the next block; the index of that block's `>>>`, or None
    at the end of the text."""
    end = text.find(SEP, at)
    if end < 0:
        tail = text[at:]
        pieces.append(tail[: held_back(tail, (SEP,))] if partial else tail)
        return None
    pieces.append(text[at:end])
    return end


def _call(text: str, name: str, at: int, calls: list[ParsedCall], *, partial: bool) -> int | None:
    """Adds the call of `name` whose body starts at `at`; the index after it, or None at the
    end of the text."""
    start = skip_space(text, at)
    if start == len(text) and partial:
        calls.append(ParsedCall(name, "", complete=False))
        return None
    if name == PYTHON and not text.startswith("{", start):
        block_end = text.find(SEP, start)
        code = text[start:] if block_end < 0 else text[start:block_end]
        if partial and block_end < 0:
            code = code[: held_back(code, (SEP,))]
        calls.append(code_call(code, complete=not partial or block_end >= 0))
        return None if block_end < 0 else block_end
    arguments, end = json_arguments(text, start, partial=partial, what=f"the call of {name}")
    if end is None:
        calls.append(ParsedCall(name, arguments, complete=False))
        return None
    calls.append(finished_call(name, arguments, partial=partial))
    after = skip_space(text, end)
    return None if after == len(text) else after


FORMAT = FunctionaryV32Format()
