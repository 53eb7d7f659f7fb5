"""Outputs made of content and call sections: each section opens with one of the family's start
markers, and the text around the sections is the content. Two ways of reading them:
`parse_sections` hands each reader the section from its start marker and keeps the content as
written; `read_sections` (the JSON families) hands it the text after the marker and joins the
content without the whitespace next to the sections.

Also here: the families whose calls are a header, JSON arguments and a closing token inside a
section of tool tokens (DeepSeek R1 and V3.1, Kimi K2), read and forced by `JsonCallSections`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    MalformedCall,
    Parsed,
    ParsedCall,
    ToolGrammar,
    content_before,
    first_marker,
    gbnf_literal,
    held_back,
    json_arguments,
    regex_literal,
    skip_space,
    tool_rules,
)
from llorch.worker.chat.types import Tool

# Reads the call section that starts at `at` (at one of the format's start markers): its calls
# and the index after it, or None as the index while it is still being written (partial parses
# only: a final read raises MalformedCall instead).
SectionReader = Callable[[str, int, bool], tuple[list[ParsedCall], int | None]]

# Reads one call section from the index after its start marker (the marker it opened with
# given): the same answer as a SectionReader's.
MarkedSectionReader = Callable[[str, int, str], tuple[list[ParsedCall], int | None]]


def unfinished(
    calls: list[ParsedCall], *, partial: bool, why: str
) -> tuple[list[ParsedCall], int | None]:
    """What a section reader returns where the text stops fitting the syntax: the calls so far
    while the output is still being written (it may yet fit), MalformedCall in the final parse."""
    if partial:
        return calls, None
    raise MalformedCall(why)


def parse_sections(
    text: str, starts: Sequence[str], *, partial: bool, read: SectionReader
) -> Parsed:
    """Content and calls of output whose calls come in sections opening with one of `starts`.
    Text between or after sections is content too, unless it is only whitespace."""
    content, at = content_before(text, starts, partial=partial)
    calls: list[ParsedCall] = []
    while at < len(text):
        section, end = read(text, at, partial)
        calls.extend(section)
        if end is None:
            break
        between, offset = content_before(text[end:], starts, partial=partial)
        if between.strip():
            content += between
        at = end + offset
    return Parsed(content=content, calls=tuple(calls))


def read_sections(
    text: str,
    starts: Sequence[str],
    read: MarkedSectionReader,
    *,
    partial: bool,
) -> Parsed:
    """Content with call sections: each starts with one of `starts` and is read by `read`.
    A partial parse holds back a trailing prefix of a start marker."""
    pieces: list[str] = []
    calls: list[ParsedCall] = []
    at = 0
    while True:
        hit = first_marker(text[at:], starts)
        if hit is None:
            tail = text[at:]
            pieces.append(tail[: held_back(tail, starts)] if partial else tail)
            break
        index, marker = at + hit[0], hit[1]
        pieces.append(text[at:index])
        section, end = read(text, index + len(marker), marker)
        calls.extend(section)
        if end is None:
            break
        at = end
    return Parsed(join_content(pieces, partial=partial), tuple(calls))


def join_content(pieces: Sequence[str], *, partial: bool) -> str:
    """The content from the text outside calls: pieces[0] before the first section (of calls,
    or markup that only separates content), then the text after each. Whitespace next to a
    section is dropped, and a partial parse holds back trailing whitespace too (a call may
    still follow it)."""
    parts = []
    for i, piece in enumerate(pieces):
        if i > 0:
            piece = piece.lstrip()
        if partial or i < len(pieces) - 1:
            piece = piece.rstrip()
        if piece:
            parts.append(piece)
    return "\n".join(parts)


def closing(
    text: str, at: int, marker: str, *, partial: bool, also: Sequence[str] = ()
) -> int | None:
    """The index after `marker` when it follows `at` (whitespace skipped). A missing closing
    marker is accepted at the end of the text in the final parse, and before any of `also`
    (the next call's start: models forget the closing tag); None while it may still come."""
    i = skip_space(text, at)
    if text.startswith(marker, i):
        return i + len(marker)
    if i == len(text) and not partial:
        return i
    if any(text.startswith(m, i) for m in also):
        return i
    if partial:
        return None
    raise MalformedCall(f"a tool call is not followed by {marker!r}")


# -- calls of a header, JSON arguments and a closing token -------------------------------------


def read_json_calls(
    text: str,
    at: int,
    partial: bool,
    *,
    opening: re.Pattern[str],
    header: re.Pattern[str],
    closing: re.Pattern[str],
    ending: re.Pattern[str],
) -> tuple[list[ParsedCall], int | None]:
    """A section reader for calls that each write a header, a JSON object of arguments and a
    closing marker, inside a section's opening and ending (each pattern matched where the
    previous one stopped; `header` names the function in its group "name", and may hold the
    call's id in a group "id"). A final parse lets the output end after a call's arguments
    without the closing markers (the model stopped there)."""
    start = opening.match(text, at)
    if start is None:
        return unfinished([], partial=partial, why="a call section does not open as it should")
    calls: list[ParsedCall] = []
    at = start.end()
    while (head := header.match(text, at)) is not None:
        name = head.group("name").strip()
        call_id = head.groupdict().get("id")
        what = f"the call of {name}"
        arguments, end = json_arguments(text, head.end(), partial=partial, what=what)
        if end is None:
            calls.append(ParsedCall(name, arguments, call_id, complete=False))
            return calls, None
        calls.append(ParsedCall(name, arguments, call_id))
        close = closing.match(text, end)
        at = end if close is None else close.end()
        if close is None:
            break
    finish = ending.match(text, at)
    if finish is not None:
        return calls, finish.end()
    if not partial and calls and not text[at:].strip():
        return calls, len(text)
    return unfinished(calls, partial=partial, why="a call section is not closed")


@dataclass(frozen=True)
class JsonCallSections:
    """The syntax of a family whose calls are each a header, JSON arguments and a closing
    token, in a section of tool tokens: how it is read (read_json_calls' patterns, the section
    starting at any of `starts`) and how the grammar writes it (the `section`'s tokens around
    the calls, joined by `joiner`; each call's `call` tokens around the GBNF of `head`, which
    names the tool, and its arguments)."""

    starts: tuple[str, ...]
    opening: re.Pattern[str]
    header: re.Pattern[str]
    closing: re.Pattern[str]
    ending: re.Pattern[str]
    section: tuple[str, str]
    call: tuple[str, str]
    head: Callable[[Tool], str]
    joiner: str = ""

    def parse(self, text: str, *, partial: bool) -> Parsed:
        return parse_sections(text, self.starts, partial=partial, read=self.read)

    def read(self, text: str, at: int, partial: bool) -> tuple[list[ParsedCall], int | None]:
        return read_json_calls(
            text,
            at,
            partial,
            opening=self.opening,
            header=self.header,
            closing=self.closing,
            ending=self.ending,
        )

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        tool_calls = tool_rules(
            builder, tools, lambda tool, _: f"{self.head(tool)} {builder.arguments_rule(tool)}"
        )
        before, after = (gbnf_literal(token) for token in self.call)
        builder.rule("call", f"{before} ({tool_calls}) {after}")
        several = f"call ({gbnf_literal(self.joiner)} call)*" if self.joiner else "call+"
        begin, end = self.section
        root = f"{gbnf_literal(begin)} {several if parallel else 'call'} {gbnf_literal(end)}"
        return ToolGrammar(builder.build(root), triggers=(regex_literal(begin),))


# Reads one call of a list at index i: the call (None when nothing of it is there yet) and the
# index after it (None while it is still being written).
CallReader = Callable[[str, int], tuple[ParsedCall | None, int | None]]


def parse_call_lists(
    text: str, start: str, end: str, read_call: CallReader, *, partial: bool, kind: str
) -> Parsed:
    """Content and calls of output whose calls come as one bracketed list between a `start`
    and an `end` token (Apertus: a JSON list; LFM2: a Python list), `kind` naming the list in
    errors. While the output is being written, the calls read so far stay."""

    def section(text: str, at: int, _: str) -> tuple[list[ParsedCall], int | None]:
        calls: list[ParsedCall] = []
        try:
            return _read_call_list(text, at, calls, start, end, read_call, partial, kind)
        except MalformedCall:
            if not partial:
                raise
            return calls, None  # the calls so far stay; the final parse judges the rest

    return read_sections(text, (start,), section, partial=partial)


def _read_call_list(
    text: str,
    at: int,
    calls: list[ParsedCall],
    start: str,
    end: str,
    read_call: CallReader,
    partial: bool,
    kind: str,
) -> tuple[list[ParsedCall], int | None]:
    i = skip_space(text, at)
    if i >= len(text):
        return unfinished(calls, partial=partial, why=f"{start} holds no call")
    if text[i] != "[":
        raise MalformedCall(f"{start} is not followed by a {kind} of calls")
    i += 1
    while True:
        call, after = read_call(text, i)
        if call is not None:
            calls.append(call)
        if after is None:
            return unfinished(calls, partial=partial, why="a call is not finished")
        i = skip_space(text, after)
        if text.startswith(",", i):
            i += 1
            continue
        if text.startswith("]", i):
            break
        if i < len(text):
            raise MalformedCall(f"the calls are not a {kind}")
        return unfinished(calls, partial=partial, why=f"the {kind} of calls is not closed")
    i = skip_space(text, i + 1)
    if text.startswith(end, i):
        return calls, i + len(end)
    if not partial and i == len(text):
        return calls, i  # the output ended before the closing token
    if partial and end.startswith(text[i:]):
        return calls, None
    raise MalformedCall(f"the calls are not followed by {end}")
