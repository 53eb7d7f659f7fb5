"""Calls written as JSON, read while they are being written: what the families whose calls
are JSON objects (Hermes, Llama 3.x, Mistral, Firefunction, Functionary, Command R7B, the
generic format) share. Their grammars are built with jsongrammar.

Readers take the output so far and an index; with `partial` they stop where the text ends (or
where it stops making sense: the final parse reports that), and report a call as soon as its
name is known with the raw text of its arguments written so far.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from llorch.worker.chat.formats.base import (
    MalformedCall,
    ParsedCall,
    json_value_end,
    object_text,
    partial_arguments,
    skip_space,
)
from llorch.worker.chat.formats.sections import unfinished


@dataclass(frozen=True)
class CallKeys:
    """The keys of a call object: the first of each group that is present is used."""

    names: tuple[str, ...] = ("name",)
    arguments: tuple[str, ...] = ("arguments",)
    ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class CallObject:
    name: str | None = None
    arguments: str | None = None  # raw text of the arguments value (so far)
    quoted: bool = False  # the arguments were written as a JSON string holding the object
    id: str | None = None
    end: int | None = None  # index after the closing brace; None while unfinished

    def call(self, *, partial: bool, closed: bool = True) -> ParsedCall | None:
        """The call this object is (None while its name is unknown). `closed`: the markup
        after the object (a closing tag) is there too."""
        if self.name is None or self.end is None or self.arguments is None or not closed:
            if not partial:
                raise MalformedCall("a tool call was not finished")
            if self.name is None:
                return None
            if self.end is None or self.arguments is None:
                text = "" if self.quoted or self.arguments is None else self.arguments
                return ParsedCall(self.name, partial_arguments(text), self.id, complete=False)
        assert self.arguments is not None
        arguments = self.arguments
        if self.quoted:
            # Some models write the arguments as a string holding the JSON object; it is only
            # shown once complete, so the streamed prefix ("") stays a prefix.
            arguments = json.loads(arguments)
        if partial and not closed:
            return ParsedCall(self.name, arguments, self.id, complete=False)
        return finished_call(self.name, arguments, self.id, partial=partial)


def read_string(text: str, at: int) -> tuple[str | None, int]:
    """(the JSON string starting at `at`, the index after it); (None, at) when the text ends
    inside it. MalformedCall when there is no string there."""
    if text[at] != '"':
        raise MalformedCall(f"expected a JSON string at {text[at : at + 20]!r}")
    end = json_value_end(text, at)
    if end is None:
        return None, at
    return json.loads(text[at:end]), end


def read_object(text: str, at: int, keys: CallKeys, *, partial: bool) -> CallObject:
    """The call object starting at `at` (whitespace skipped), read as far as the text goes. A
    partial parse that meets something that is not a call object keeps what it had read."""
    state = _ObjectState()
    try:
        return _read_object(text, at, keys, state)
    except MalformedCall:
        if not partial:
            raise
        return state.unfinished()


@dataclass
class _ObjectState:
    name: str | None = None
    id: str | None = None
    arguments: str | None = None
    quoted: bool = False

    def unfinished(self) -> CallObject:
        return CallObject(self.name, self.arguments, self.quoted, self.id)


def _read_object(text: str, at: int, keys: CallKeys, state: _ObjectState) -> CallObject:
    i = skip_space(text, at)
    if i >= len(text):
        return state.unfinished()
    if text[i] != "{":
        raise MalformedCall("a tool call is not a JSON object")
    i += 1
    while True:
        i = skip_space(text, i)
        if i >= len(text):
            return state.unfinished()
        if text[i] == "}":
            break
        key, i = read_string(text, i)
        i = skip_space(text, i)
        if key is None or i >= len(text):
            return state.unfinished()
        if text[i] != ":":
            raise MalformedCall("a tool call is not a JSON object")
        i = skip_space(text, i + 1)
        end = json_value_end(text, i)
        if key in keys.arguments and state.arguments is None:
            state.quoted = text.startswith('"', i)
            state.arguments = text[i:] if end is None else text[i:end]
        if end is None:
            return state.unfinished()
        if (key in keys.names and state.name is None) or (key in keys.ids and state.id is None):
            value = json.loads(text[i:end])
            if not isinstance(value, str):
                raise MalformedCall(f"a tool call's {key!r} is not a string")
            if key in keys.names:
                state.name = value
            else:
                state.id = value
        i = skip_space(text, end)
        if i >= len(text):
            return state.unfinished()
        if text[i] == ",":
            i += 1
        elif text[i] != "}":
            raise MalformedCall("a tool call is not a JSON object")
    return CallObject(state.name, state.arguments, state.quoted, state.id, end=i + 1)


def read_array(
    text: str, at: int, keys: CallKeys, *, partial: bool
) -> tuple[list[ParsedCall], int | None]:
    """The calls of a JSON array of call objects starting at `at`, and the index after the
    array (None while unfinished)."""
    calls: list[ParsedCall] = []
    i = skip_space(text, at)
    if i < len(text) and text[i] != "[":
        return unfinished(calls, partial=partial, why="tool calls are not a JSON array")
    i += 1
    while True:
        i = skip_space(text, i)
        if i >= len(text):
            return unfinished(calls, partial=partial, why="the tool calls were not finished")
        if text[i] == "]" and not calls:
            return calls, i + 1
        obj = read_object(text, i, keys, partial=partial)
        call = obj.call(partial=partial)
        if call is not None:
            calls.append(call)
        if obj.end is None:
            return calls, None
        i = skip_space(text, obj.end)
        if i < len(text) and text[i] == ",":
            i += 1
        elif i < len(text) and text[i] == "]":
            return calls, i + 1
        else:
            return unfinished(calls, partial=partial, why="tool calls are not a JSON array")


def finished_call(
    name: str, arguments: str, call_id: str | None = None, *, partial: bool
) -> ParsedCall:
    """A call whose arguments are all written: MalformedCall when they are not a JSON object
    (a partial parse keeps the call, unfinished, so that calls never disappear while
    streaming; the final parse judges)."""
    try:
        return ParsedCall(name, object_text(arguments, what="tool call arguments"), call_id)
    except MalformedCall:
        if not partial:
            raise
        return ParsedCall(name, arguments, call_id, complete=False)


# The code interpreter's tool, which some families call with raw code rather than JSON.
PYTHON = "python"


def code_call(code: str, *, complete: bool) -> ParsedCall:
    """A call of the code interpreter whose argument is raw code, as `{"code": ...}`: while
    the code is still being written the string is left open, so that the arguments only
    grow."""
    text = '{"code": ' + json.dumps(code, ensure_ascii=False)
    arguments = text + "}" if complete else partial_arguments(text[:-1])
    return ParsedCall(PYTHON, arguments, complete=complete)
