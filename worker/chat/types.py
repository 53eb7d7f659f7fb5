"""The chat core's surface-neutral request and events.

Every chat surface (OpenAI chat completions, the worker contract, Anthropic Messages, OpenAI
Responses) translates its JSON into a `ChatRequest` and renders `ChatEvent`s back; the engine
takes the request whole (template, grammar, tokens, admission) and nothing in between lists
its fields again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from llorch.worker.backend.errors import WorkerError
from llorch.worker.backend.protocol import FinishEvent, SamplingParams, Scored, StopReason
from llorch.worker.media import MediaRef


@dataclass(frozen=True)
class ToolCall:
    """A call the assistant made: `arguments` is the JSON text of an object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """One turn. `reasoning` is an assistant's thinking, kept apart from its `content`; a tool
    turn answers the call `tool_call_id` (its function `name` filled in by the core)."""

    role: str  # system, user, assistant, tool
    content: str = ""
    reasoning: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Tool:
    """A function the model may call; `parameters` is a JSON schema of its arguments."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    strict: bool = False


class ToolChoiceMode(StrEnum):
    AUTO = "auto"  # free text, or calls: parsed when the family's markup starts
    NONE = "none"  # no calls: nothing forced, nothing parsed
    REQUIRED = "required"  # at least one call, forced by a grammar
    NAMED = "named"  # a call of `ToolChoice.name`, forced


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    name: str | None = None  # NAMED only


class ReasoningFormat(StrEnum):
    NONE = "none"  # thinking stays in the content, as the model wrote it
    AUTO = "auto"  # thinking is separated into `reasoning`


@dataclass(frozen=True)
class ReasoningOptions:
    format: ReasoningFormat | None = None  # None: as the server is set up
    effort: str | None = None  # passed to templates that read `reasoning_effort` (gpt-oss)
    budget: int | None = None  # thinking tokens at most (0: no thinking); None: unbounded


@dataclass(frozen=True)
class JsonFormat:
    """The answer must be JSON: an object valid under `schema` (None: any object)."""

    schema: Mapping[str, Any] | None = None
    param: str = "response_format"  # the request field that asked, for errors


@dataclass(frozen=True)
class ChatRequest:
    """A chat generation as every surface asks for it."""

    job_id: str
    messages: tuple[Message, ...]
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    parallel_tool_calls: bool = True
    json_format: JsonFormat | None = None
    # Its grammar is the request's own GBNF, if any.
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None  # None: the rest of the slot's context
    timeout_s: float | None = None
    logprobs: int | None = None
    lora: Sequence[tuple[str, float | None]] | None = None
    speculative: bool | None = None
    reasoning: ReasoningOptions = ReasoningOptions()
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    n: int = 1
    # Images, in order: each stands in a message's content as media.CHAT_MARKER.
    media: tuple[MediaRef, ...] = ()


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    text: str
    scored: tuple[Scored, ...] = ()  # the tokens this text came from, when logprobs were asked


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A call's start (id and name, arguments "") or a fragment of its arguments' JSON text."""

    index: int  # of the call within the answer
    arguments: str
    id: str | None = None  # set once, on the call's first delta
    name: str | None = None


class FinishReason(StrEnum):
    STOP = "stop"  # end of turn, or a stop sequence
    LENGTH = "length"  # max_tokens, or the context
    TOOL_CALLS = "tool_calls"
    CANCELLED = "cancelled"  # the client, a deadline or a stopping worker ended it
    ERROR = "error"


@dataclass(frozen=True)
class ChatFinish:
    """The last event of a choice: why it ended, and the generation's own record."""

    reason: FinishReason
    event: FinishEvent
    calls: tuple[ToolCall, ...] = ()
    reasoning_tokens: int = 0

    @property
    def stop_sequence(self) -> str | None:
        if self.event.stop_reason is StopReason.STOP_SEQUENCE:
            return self.event.stop_sequence_matched
        return None


@dataclass(frozen=True)
class ChatFailed:
    """The generation failed (the job's error); nothing follows."""

    error: WorkerError


ChatEvent = TextDelta | ReasoningDelta | ToolCallDelta | ChatFinish | ChatFailed
