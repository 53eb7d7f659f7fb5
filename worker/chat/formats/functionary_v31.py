"""Functionary v3.1 (Llama 3.1 based): calls are `<function=NAME>{...}</function>`,

    <function=get_weather>{"city": "Paris"}</function>

and its code interpreter is called with `<|python_tag|>` followed by the code (read as a call of
`python` with {"code": ...}), as its template renders a `python` call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

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
from llorch.worker.chat.formats.jsoncalls import PYTHON, code_call, finished_call
from llorch.worker.chat.formats.jsongrammar import any_call, repeated
from llorch.worker.chat.formats.sections import closing, read_sections
from llorch.worker.chat.types import Tool

START = "<function="
END = "</function>"
PYTHON_TAG = "<|python_tag|>"
NAME = re.compile(r"[\w.-]+")


@dataclass(frozen=True)
class FunctionaryV31Format:
    name: str = "functionary_v31"
    markers: tuple[str, ...] = (START, END, PYTHON_TAG)

    def matches(self, template: str) -> bool:
        # Its Llama 3.1 headers tell it from Qwen3-Coder's `<function=` inside <tool_call>.
        return START in template and "<|start_header_id|>" in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        def section(text: str, at: int, marker: str) -> tuple[list[ParsedCall], int | None]:
            try:
                if marker == PYTHON_TAG:
                    return _python_call(text, at, partial=partial)
                return _function_call(text, at, partial=partial)
            except MalformedCall:
                if not partial:
                    raise
                return [], None

        return read_sections(text, (START, PYTHON_TAG), section, partial=partial)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()

        def call(tool: Tool, arguments: str) -> str:
            return f"{gbnf_literal(START + tool.name + '>')} {arguments} {gbnf_literal(END)}"

        root = repeated(any_call(builder, tools, call), "", parallel=parallel)
        triggers = [regex_literal(START)]
        if any(tool.name == PYTHON for tool in tools):
            # The code interpreter's raw code runs to the end of the answer.
            root = f"{root} | {gbnf_literal(PYTHON_TAG)} .*"
            triggers.append(regex_literal(PYTHON_TAG))
        return ToolGrammar(gbnf=builder.build(root), triggers=tuple(triggers))


def _function_call(text: str, at: int, *, partial: bool) -> tuple[list[ParsedCall], int | None]:
    gt = text.find(">", at)
    if gt < 0:
        if partial:
            return [], None
        raise MalformedCall(f"{START} is not followed by NAME>")
    name = text[at:gt]
    if not NAME.fullmatch(name):
        raise MalformedCall(f"not a tool name: {name!r}")
    arguments, end = json_arguments(text, gt + 1, partial=partial, what=f"the call of {name}")
    if end is None:
        return [ParsedCall(name, arguments, complete=False)], None
    call = finished_call(name, arguments, partial=partial)
    after = closing(text, end, END, partial=partial, also=(START, PYTHON_TAG))
    return [call if after is not None else replace(call, complete=False)], after


def _python_call(text: str, at: int, *, partial: bool) -> tuple[list[ParsedCall], int | None]:
    start = skip_space(text, at)
    if start == len(text):
        if partial:
            return [], None
        raise MalformedCall(f"{PYTHON_TAG} is followed by no code")
    if text.startswith("{", start):
        # The template renders a python call's arguments as JSON.
        arguments, end = json_arguments(text, start, partial=partial, what="the python call")
        if end is None:
            return [ParsedCall(PYTHON, arguments, complete=False)], None
        return [finished_call(PYTHON, arguments, partial=partial)], end
    return [code_call(text[start:], complete=not partial)], None if partial else len(text)


FORMAT = FunctionaryV31Format()
