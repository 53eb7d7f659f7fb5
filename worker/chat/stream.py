"""One choice of a chat as events: the job's tokens read back through the output reader into
text, thinking and tool-call deltas, then a ChatFinish."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from llorch.worker.backend.protocol import FinishEvent, PromptScores, Scored, StopReason, TokenEvent
from llorch.worker.chat.output import OutputPlan, OutputReader
from llorch.worker.chat.types import (
    ChatEvent,
    ChatFailed,
    ChatFinish,
    FinishReason,
    TextDelta,
)
from llorch.worker.jobs import CancelReason, JobEvent, JobFailed

_REASONS = {
    StopReason.EOS: FinishReason.STOP,
    StopReason.STOP_SEQUENCE: FinishReason.STOP,
    StopReason.MAX_TOKENS: FinishReason.LENGTH,
    StopReason.CANCELLED: FinishReason.CANCELLED,
    StopReason.ERROR: FinishReason.ERROR,
}


class JobEvents(Protocol):
    """What a chat stream reads: the engine's JobStream."""

    def __aiter__(self) -> AsyncIterator[JobEvent]: ...

    def ready(self) -> list[JobEvent]: ...

    def cancel(self) -> None: ...

    @property
    def cancel_reason(self) -> CancelReason | None: ...

    async def next_within(self, seconds: float | None) -> JobEvent | None: ...


class ChatStream:
    """The events of one choice, in groups that arrived together. Leaving early cancels."""

    def __init__(self, job: JobEvents, plan: OutputPlan, prompt_tokens: int) -> None:
        self.job = job
        self.reader = OutputReader(plan)
        self.prompt_tokens = prompt_tokens
        self._scored: list[Scored] = []
        self._thinking_tokens = 0
        self._done = False

    @property
    def cancel_reason(self) -> CancelReason | None:
        return self.job.cancel_reason

    def cancel(self) -> None:
        self.job.cancel()

    async def groups(self) -> AsyncIterator[list[ChatEvent]]:
        """Lists of events, each list what one wake-up brought (one write for a surface)."""
        try:
            async for event in self.job:
                out: list[ChatEvent] = []
                for each in [event, *self.job.ready()]:
                    out += self.read(each)
                if out:
                    yield out
        finally:
            self.job.cancel()  # nothing, once the job has finished

    async def next_group(self, seconds: float) -> list[ChatEvent] | None:
        """The events of the next wake-up, or None when nothing came within `seconds`."""
        event = await self.job.next_within(seconds)
        if event is None:
            return None
        out: list[ChatEvent] = []
        for each in [event, *self.job.ready()]:
            out += self.read(each)
        return out

    def read(self, event: JobEvent) -> list[ChatEvent]:
        if isinstance(event, TokenEvent):
            if event.scored is not None:
                self._scored.append(event.scored)
            reader = self.reader
            inside = reader.thinking  # a token fed inside the block is thinking (its close too)
            deltas = reader.feed(event.text)
            if (
                reader.plan.think is None
                and reader.reasoning
                and not (reader.content or reader.calls)
            ):
                inside = True  # a format's own thinking (gpt-oss): until the answer starts
            if inside:
                self._thinking_tokens += 1
            return self._with_scores(deltas)
        if isinstance(event, FinishEvent):
            deltas, calls = self.reader.finish(cut=event.stop_reason is StopReason.MAX_TOKENS)
            out = self._with_scores(deltas)
            if self._scored:
                out.append(TextDelta("", tuple(self._scored)))
                self._scored.clear()
            reason = _REASONS[event.stop_reason]
            if calls and reason is FinishReason.STOP:
                reason = FinishReason.TOOL_CALLS
            self._done = True
            return [*out, ChatFinish(reason, event, calls, self._thinking_tokens)]
        if isinstance(event, JobFailed):
            self._done = True
            return [ChatFailed(event.error)]
        if isinstance(event, PromptScores):
            return []
        return []  # JobStarted

    def _with_scores(self, deltas: Sequence[ChatEvent]) -> list[ChatEvent]:
        """Scored tokens ride on the first text delta after them."""
        out: list[ChatEvent] = []
        for delta in deltas:
            if isinstance(delta, TextDelta) and self._scored:
                delta = TextDelta(delta.text, tuple(self._scored))
                self._scored.clear()
            out.append(delta)
        return out
