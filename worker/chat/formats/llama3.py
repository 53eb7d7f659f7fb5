"""Llama 3.1 / 3.2 / 3.3: the answer is a bare JSON object,

    {"name": "get_weather", "parameters": {"city": "Paris"}}

(Meta's templates print "parameters"; models also write "arguments", and sometimes put
`<|python_tag|>` first). Llama 3.1's built-in tools are called as
`<|python_tag|>brave_search.call(query="...")`, and its code interpreter as `<|python_tag|>`
followed by code (read as a call of `python` with {"code": ...}).

The JSON form has no start marker: a call is only recognised at the start of the answer, where
the model writes it (text that merely contains JSON later on stays content).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    MalformedCall,
    Parsed,
    ParsedCall,
    ToolGrammar,
    held_back,
    regex_literal,
    skip_space,
)
from llorch.worker.chat.formats.jsoncalls import CallKeys, code_call, read_object
from llorch.worker.chat.formats.jsongrammar import WS_REGEX, call_objects
from llorch.worker.chat.formats.sections import join_content
from llorch.worker.chat.types import Tool

PYTHON_TAG = "<|python_tag|>"
KEYS = CallKeys(names=("name",), arguments=("parameters", "arguments"))
# How a call object opens; models sometimes add OpenAI's "type" first.
CALL_HEAD = re.compile(r'\s*\{\s*(?:"type"\s*:\s*"function"\s*,\s*)?"name"\s*:')
CALL_HEADS = ('{"type":"function","name":', '{"name":')
BUILTIN_CALL = re.compile(r"\s*([A-Za-z_]\w*)\.call\(")
# What may still become `NAME.call(` while it is being written.
BUILTIN_PREFIX = re.compile(r"\s*[A-Za-z_]\w*(?:\.(?:c(?:a(?:l(?:l)?)?)?)?)?")


@dataclass(frozen=True)
class Llama3Format:
    name: str = "llama3"
    markers: tuple[str, ...] = (PYTHON_TAG,)

    def matches(self, template: str) -> bool:
        # Meta's templates answer tool results in an "ipython" turn.
        return "<|start_header_id|>ipython<|end_header_id|>" in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        if _opens_call(text, partial=partial):
            return _json_calls(text, 0, "", partial=partial)
        tag = text.find(PYTHON_TAG)
        if tag < 0:
            if partial:
                return Parsed(join_content([text[: held_back(text, (PYTHON_TAG,))]], partial=True))
            return Parsed(text)
        before = text[:tag]
        at = tag + len(PYTHON_TAG)
        if text.startswith("{", skip_space(text, at)):
            return _json_calls(text, at, before, partial=partial)
        content = join_content([before, ""], partial=partial)
        call = _python_tag_call(text[at:], partial=partial)
        return Parsed(content, () if call is None else (call,))

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        # One call: Meta's templates refuse more than one call per message.
        builder = GrammarBuilder()
        typed = '("\\"type\\"" ws ":" ws "\\"function\\"" ws "," ws)? '
        call = call_objects(builder, tools, arguments_key="parameters", head=typed)
        start = (
            f'^\\s*(\\{{{WS_REGEX}(?:"type"{WS_REGEX}:{WS_REGEX}"function"{WS_REGEX},{WS_REGEX})?'
            f'"name")'
        )
        return ToolGrammar(
            gbnf=builder.build(f'("{PYTHON_TAG}" ws)? {call}'),
            triggers=(start, regex_literal(PYTHON_TAG)),
        )


def _opens_call(text: str, *, partial: bool) -> bool:
    """Whether the answer starts with a call object (partial: or may still turn out to)."""
    if CALL_HEAD.match(text):
        return True
    if not partial or not text.lstrip().startswith("{"):
        return False
    compact = "".join(text.split())
    return any(head.startswith(compact) for head in CALL_HEADS)


def _json_calls(text: str, at: int, before: str, *, partial: bool) -> Parsed:
    obj = read_object(text, at, KEYS, partial=partial)
    call = obj.call(partial=partial)
    calls = () if call is None else (call,)
    if obj.end is None:
        return Parsed(join_content([before, ""], partial=partial), calls)
    after = text[obj.end :]
    if partial:
        after = after[: held_back(after, (PYTHON_TAG,))]
    return Parsed(join_content([before, after], partial=partial), calls)


def _python_tag_call(code: str, *, partial: bool) -> ParsedCall | None:
    """The call after `<|python_tag|>`: a built-in tool's `NAME.call(arg="value", ...)`, or
    code for the code interpreter."""
    builtin = BUILTIN_CALL.match(code)
    if builtin is not None:
        if partial:
            # Its arguments are not JSON: they are only shown once complete.
            return ParsedCall(builtin.group(1), "", complete=False)
        return ParsedCall(builtin.group(1), _builtin_arguments(code.strip()))
    if (partial and BUILTIN_PREFIX.fullmatch(code)) or not code.strip():
        if not partial:
            raise MalformedCall("<|python_tag|> is followed by no call")
        return None
    return code_call(code.lstrip(), complete=not partial)


def _builtin_arguments(source: str) -> str:
    try:
        expression = ast.parse(source, mode="eval").body
        if not isinstance(expression, ast.Call) or expression.args:
            raise ValueError("not a call with keyword arguments")
        values = {k.arg: ast.literal_eval(k.value) for k in expression.keywords if k.arg}
    except (SyntaxError, ValueError) as exc:
        raise MalformedCall(f"not a built-in tool call, NAME.call(key=value, ...): {exc}") from None
    return json.dumps(values, ensure_ascii=False)


FORMAT = Llama3Format()
