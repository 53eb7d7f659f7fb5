"""The output of a response built from the chat core's events: its items (reasoning, message,
function_call) and the stream events that announce them, as OpenAI's Responses API sends them.

The shapes are the `openai` SDK's (openai.types.responses): an item is added empty
(`response.output_item.added`), grows by deltas, and is closed by its `.done` events with its
whole text, before the next item is added. The SDK's stream helper builds its snapshot from
exactly this: it appends each added item and part, then each delta to the last one.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from llorch.worker.chat.types import (
    ChatEvent,
    ChatFinish,
    Message,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)

Event = dict[str, Any]


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


class Output:
    """The items so far (`items`, each final once closed) and the one being written."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._text = ""  # of the open item: its text, or its call's arguments

    def feed(self, event: ChatEvent) -> list[Event]:
        """The stream events of one event of the chat core."""
        if isinstance(event, ReasoningDelta) and event.text:
            out = self._ensure("reasoning")
            return [*out, self._delta("response.reasoning_text.delta", event.text)]
        if isinstance(event, TextDelta) and event.text:
            out = self._ensure("message")
            delta = self._delta("response.output_text.delta", event.text)
            return [*out, delta | {"logprobs": []}]
        if isinstance(event, ToolCallDelta):
            out = []
            if event.id is not None:
                call = {
                    "id": _item_id("fc"),
                    "type": "function_call",
                    "call_id": event.id,
                    "name": event.name,
                    "arguments": "",
                    "status": "in_progress",
                }
                out = [*self.close(), self._add(call)]
            if event.arguments and self._open is not None:
                out.append(self._delta("response.function_call_arguments.delta", event.arguments))
            return out
        return []

    def close(self, status: str = "completed") -> list[Event]:
        """Close the open item (`incomplete` when the answer was cut): its `.done` events."""
        item, text = self._open, self._text
        if item is None:
            return []
        self._open, self._text = None, ""
        where = {"item_id": item["id"], "output_index": len(self.items)}
        out: list[Event] = []
        if item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            item = item | {"content": [part]}
            out += [
                {"type": "response.reasoning_text.done", **where, "content_index": 0, "text": text},
                {"type": "response.content_part.done", **where, "content_index": 0, "part": part},
            ]
        elif item["type"] == "message":
            part = _output_text(text)
            item = item | {"status": status, "content": [part]}
            out += [
                {"type": "response.output_text.done", **where, "content_index": 0}
                | {"text": text, "logprobs": []},
                {"type": "response.content_part.done", **where, "content_index": 0, "part": part},
            ]
        else:
            item = item | {"arguments": text, "status": status}
            out.append(
                {"type": "response.function_call_arguments.done", **where}
                | {"name": item["name"], "arguments": text}
            )
        out.append({"type": "response.output_item.done", "output_index": len(self.items)})
        out[-1]["item"] = item
        self.items.append(item)
        return out

    def keep_calls(self, call_ids: set[str]) -> None:
        """Drop the function_call items whose calls are not in `call_ids`."""
        self.items[:] = [
            item
            for item in self.items
            if item["type"] != "function_call" or item["call_id"] in call_ids
        ]

    def _ensure(self, kind: str) -> list[Event]:
        """Events that open an item of `kind`, unless it is the one open."""
        if self._open is not None and self._open["type"] == kind:
            return []
        out = self.close()
        if kind == "reasoning":
            item = {"id": _item_id("rs"), "type": "reasoning", "summary": [], "content": []}
            part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
        else:
            item = {
                "id": _item_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            part = _output_text("")
        added = {"type": "response.content_part.added", "content_index": 0, "part": part}
        return [*out, self._add(item), added | self._where()]

    def _add(self, item: dict[str, Any]) -> Event:
        self._open = item
        return {"type": "response.output_item.added", "output_index": len(self.items), "item": item}

    def _where(self) -> Event:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self.items)}

    def _delta(self, kind: str, text: str) -> Event:
        self._text += text
        content = {} if kind.startswith("response.function_call") else {"content_index": 0}
        return {"type": kind, **self._where(), **content, "delta": text}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def assistant_message(items: Sequence[dict[str, Any]]) -> Message:
    """The assistant turn of an answer's output items, as a continuation renders it (the same
    turn the items make when a client sends them back as input)."""
    reasoning = "".join(p["text"] for i in items if i["type"] == "reasoning" for p in i["content"])
    text = "".join(p["text"] for i in items if i["type"] == "message" for p in i["content"])
    calls = tuple(
        ToolCall(i["call_id"], i["name"], i["arguments"] or "{}")
        for i in items
        if i["type"] == "function_call"
    )
    return Message("assistant", text, reasoning=reasoning or None, tool_calls=calls)


def usage(finish: ChatFinish) -> dict[str, Any]:
    event = finish.event
    return {
        "input_tokens": event.prompt_tokens,
        # Prompt tokens found in the KV cache (a continued conversation's earlier turns).
        "input_tokens_details": {"cached_tokens": event.prompt_cached, "cache_write_tokens": 0},
        "output_tokens": event.tokens_out,
        "output_tokens_details": {"reasoning_tokens": finish.reasoning_tokens},
        "total_tokens": event.prompt_tokens + event.tokens_out,
    }
