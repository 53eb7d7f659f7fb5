"""The model's output read back as chat events: thinking, answer text and tool calls.

After every token the whole output so far is split (thinking, rest) and parsed by the request's
tool-call format; what grew since the last time goes out as deltas. Parses of a partial output
only ever grow (formats/base.py states the rule), so a delta never takes anything back and
markup never reaches the content. At the end the output is parsed once more, in full: a call
the model wrote malformed makes the whole answer content, as it was written.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from llorch.worker.chat.formats.base import MalformedCall, Parsed, ToolFormat
from llorch.worker.chat.reasoning import ThinkTags, split
from llorch.worker.chat.types import ReasoningDelta, TextDelta, ToolCall, ToolCallDelta

Delta = TextDelta | ReasoningDelta | ToolCallDelta


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class OutputPlan:
    """How a request's output is read."""

    tool_format: ToolFormat | None = None  # None: calls are neither expected nor parsed
    think: ThinkTags | None = None  # None: thinking is not separated
    thinking_started: bool = False  # the prompt opened the thinking block
    max_calls: int | None = None  # 1 when parallel calls are off


@dataclass
class _SentCall:
    id: str
    name: str
    arguments: str = ""


@dataclass
class OutputReader:
    """Feeds on the output's text as it comes; gives the deltas and, at the end, the calls."""

    plan: OutputPlan
    call_id: Callable[[], str] = new_call_id
    text: str = ""
    reasoning: str = ""  # sent so far
    content: str = ""
    calls: list[_SentCall] = field(default_factory=list)
    thinking: bool = False  # inside the thinking block, as of the last piece

    def __post_init__(self) -> None:
        self.thinking = self.plan.think is not None and self.plan.thinking_started

    def feed(self, piece: str) -> list[Delta]:
        if not piece:
            return []
        self.text += piece
        reasoning, parsed = self._read(partial=True)
        if self.plan.tool_format is not None:
            # Whitespace before a call is dropped from the content: hold it until text
            # follows it (or the end says there is no call).
            parsed = Parsed(parsed.content.rstrip(), parsed.calls, parsed.reasoning)
        return self._deltas(reasoning, parsed)

    def finish(self, *, cut: bool = False) -> tuple[list[Delta], tuple[ToolCall, ...]]:
        """The last deltas and the calls; a malformed call leaves the rest as content. An
        output `cut` by the token limit inside a call keeps the calls it completed (the cut
        one was not malformed, only unfinished)."""
        try:
            reasoning, parsed = self._read(partial=False)
        except MalformedCall:
            reasoning, parsed = self._read(partial=True)
            complete = tuple(c for c in parsed.calls if c.complete)
            if cut and complete:
                parsed = Parsed(parsed.content, complete)
            else:
                reasoning, rest = self._split(partial=False)
                parsed = Parsed(rest)
        deltas = self._deltas(reasoning, parsed, final=True)
        return deltas, tuple(ToolCall(c.id, c.name, c.arguments) for c in self.calls)

    def _split(self, *, partial: bool) -> tuple[str, str]:
        tags = self.plan.think
        if tags is None:
            return "", self.text
        cut = split(self.text, tags, started=self.plan.thinking_started, partial=partial)
        if partial:
            opened = self.plan.thinking_started or self.text.lstrip().startswith(tags.open)
            self.thinking = cut.thinking and opened
        return cut.reasoning, cut.rest

    def _read(self, *, partial: bool) -> tuple[str, Parsed]:
        reasoning, rest = self._split(partial=partial)
        fmt = self.plan.tool_format
        if fmt is None:
            return reasoning, Parsed(rest)
        parsed = fmt.parse(rest, partial=partial)
        if parsed.reasoning:  # a format with thinking of its own (gpt-oss, Command R7B)
            reasoning = (reasoning + "\n" + parsed.reasoning) if reasoning else parsed.reasoning
        if self.plan.max_calls is not None and len(parsed.calls) > self.plan.max_calls:
            parsed = Parsed(parsed.content, parsed.calls[: self.plan.max_calls])
        return reasoning, parsed

    def _deltas(self, reasoning: str, parsed: Parsed, final: bool = False) -> list[Delta]:
        out: list[Delta] = []
        grown = _growth(self.reasoning, reasoning)
        if grown:
            self.reasoning += grown
            out.append(ReasoningDelta(grown))
        grown = _growth(self.content, parsed.content)
        if grown:
            self.content += grown
            out.append(TextDelta(grown))
        for index, call in enumerate(parsed.calls):
            if index == len(self.calls):
                sent = _SentCall(call.id or self.call_id(), call.name)
                self.calls.append(sent)
                out.append(ToolCallDelta(index, "", id=sent.id, name=sent.name))
            sent = self.calls[index]
            grown = _growth(sent.arguments, call.arguments)
            if grown:
                sent.arguments += grown
                out.append(ToolCallDelta(index, grown))
        if final:
            # The final parse has what partial ones held back (trailing whitespace): what a
            # stream has sent must add up to the answer, so its calls' arguments end whole.
            del self.calls[len(parsed.calls) :]
        return out


def _growth(sent: str, now: str) -> str:
    """What `now` adds to `sent`; nothing when it does not extend it (a format broke the
    rule that partial parses only grow: nothing is taken back from a client)."""
    return now[len(sent) :] if now.startswith(sent) else ""
