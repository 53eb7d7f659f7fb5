"""The responses a worker keeps (`store: true`), for `previous_response_id`, `GET` and `DELETE`.

In memory and bounded: each served model keeps its most recently used responses, at most
`--responses-store` of them; storing one more forgets the least recently used of that model.
A kept response holds the response object as it was answered and its whole conversation as
chat messages (the earlier turns it continued, its input, its output), without its
instructions, which OpenAI does not carry over to the next response. Messages are immutable
and shared between the responses of one conversation, so a long conversation keeps each turn's
text once. Only the event loop touches the store: no lock is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from llorch.worker.backend.errors import WorkerError
from llorch.worker.chat.types import Message


class ResponseNotFound(WorkerError):
    """No kept response has this id: never stored, deleted, or forgotten for newer ones."""

    code = "NOT_FOUND"
    status = 404

    def __init__(self, response_id: str, param: str | None = None) -> None:
        super().__init__(
            f"no response with id {response_id[:64]!r} is stored here (it was stored with "
            "store: false, deleted, or forgotten for newer ones: see --responses-store)",
            param=param,
            value=response_id[:64],
        )


@dataclass(frozen=True)
class StoredResponse:
    id: str
    model: str  # the served name: responses are counted against their model's share
    body: dict[str, Any]  # the response object, as answered
    messages: tuple[Message, ...]  # the conversation up to and including its output


class ResponseStore:
    """Kept responses, least recently used forgotten first, `capacity` per model."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._by_model: dict[str, OrderedDict[str, StoredResponse]] = {}
        self._model_of: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._model_of)

    def put(self, response: StoredResponse) -> None:
        if self.capacity <= 0:
            return
        self.delete(response.id)
        kept = self._by_model.setdefault(response.model, OrderedDict())
        kept[response.id] = response
        self._model_of[response.id] = response.model
        while len(kept) > self.capacity:
            forgotten, _ = kept.popitem(last=False)
            del self._model_of[forgotten]

    def get(self, response_id: str, param: str | None = None) -> StoredResponse:
        """The response (now the most recently used of its model), or a 404 naming `param`."""
        model = self._model_of.get(response_id)
        if model is None:
            raise ResponseNotFound(response_id, param)
        kept = self._by_model[model]
        kept.move_to_end(response_id)
        return kept[response_id]

    def delete(self, response_id: str) -> bool:
        model = self._model_of.pop(response_id, None)
        if model is None:
            return False
        kept = self._by_model[model]
        del kept[response_id]
        if not kept:
            del self._by_model[model]
        return True
