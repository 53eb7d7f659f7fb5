"""A reasoning budget: the tokens a sequence may generate inside its thinking block before
the block's closing tag is forced.

The states and their order are those of llama.cpp's reasoning-budget sampler
(common/reasoning-budget.cpp): idle until the opening tag's tokens are generated (or counting
from the start when the prompt opened the block), counting the tokens inside the block until
the model closes it itself or `tokens` have been generated, then forcing the closing tag's
tokens one by one, then done, until an opening tag starts another block with a fresh budget.
A budget that runs out inside a multi-byte character waits for the character to end, so the
tag never splits it.

llama.cpp forces a token by setting every other logit to -inf; here the batch decoder asks
forced() before sampling and uses that token instead (worker/backend/batch.py).
"""

from __future__ import annotations

from enum import Enum, auto

from llorch.worker.backend.protocol import ReasoningBudget


class Phase(Enum):
    IDLE = auto()  # outside a thinking block, watching for the opening tag
    COUNTING = auto()  # inside one, counting its tokens, watching for the closing tag
    WAITING_UTF8 = auto()  # the budget is spent; a multi-byte character is still open
    FORCING = auto()  # the closing tag's tokens come next, whatever the model says
    DONE = auto()  # closed; watching for another opening tag


class _TagMatcher:
    """Whether the tokens fed so far end with a tag's tokens. Like llama.cpp's matcher it
    starts over after a match, so one tag's tokens never count toward the next match."""

    def __init__(self, tag: tuple[int, ...]) -> None:
        self._tag = tag
        self._recent: list[int] = []

    def feed(self, token: int) -> bool:
        if not self._tag:
            return False
        self._recent.append(token)
        del self._recent[: -len(self._tag)]
        if tuple(self._recent) == self._tag:
            self._recent.clear()
            return True
        return False

    def reset(self) -> None:
        self._recent.clear()


def _ends_inside_character(tail: bytes) -> bool:
    """Whether `tail` (the output's last bytes) stops inside a multi-byte UTF-8 character:
    llama.cpp's common_utf8_is_complete, over the output rather than the last piece alone."""
    for back in range(1, min(4, len(tail)) + 1):
        byte = tail[-back]
        if byte & 0xC0 != 0x80:  # the last lead (or ASCII) byte
            needed = 4 if byte >= 0xF0 else 3 if byte >= 0xE0 else 2 if byte >= 0xC0 else 1
            return back < needed
    return bool(tail)  # only continuation bytes: no character ends here


class ThinkingBudget:
    """Feed every generated token (forced ones too) with feed(); forced() is the token that
    must come next, or None when the model samples freely."""

    def __init__(self, budget: ReasoningBudget) -> None:
        self._budget = budget
        self._open = _TagMatcher(budget.open)
        self._close = _TagMatcher(budget.close)
        self._tail = b""  # the output's last bytes, to tell whether a character is open
        self.phase = Phase.IDLE
        self._remaining = 0
        self._forced_at = 0  # the next token of the closing tag to force
        if budget.started:
            self._enter_block()

    def forced(self) -> int | None:
        if self.phase is Phase.FORCING:
            return self._budget.close[self._forced_at]
        return None

    def give_up(self) -> None:
        """Stop forcing the closing tag (a grammar does not allow it): the block ends as it is."""
        if self.phase in (Phase.FORCING, Phase.COUNTING, Phase.WAITING_UTF8):
            self._done()

    def feed(self, token: int, piece: bytes) -> None:
        """`piece`: the bytes the token added to the output."""
        self._tail = (self._tail + piece)[-4:]
        if self.phase in (Phase.IDLE, Phase.DONE):
            if self._open.feed(token):
                self._enter_block()
        elif self.phase is Phase.FORCING:
            self._forced_at += 1
            if self._forced_at >= len(self._budget.close):
                self._done()
        elif self._close.feed(token):
            self._done()  # the model closed the block itself
        else:
            if self.phase is Phase.COUNTING:
                self._remaining -= 1
            if self._remaining <= 0:
                self._spent()

    def _enter_block(self) -> None:
        self.phase = Phase.COUNTING
        self._remaining = self._budget.tokens
        self._close.reset()
        if self._remaining <= 0:
            self._spent()

    def _spent(self) -> None:
        if not self._budget.close:
            self._done()
        elif _ends_inside_character(self._tail):
            self.phase = Phase.WAITING_UTF8
        else:
            self.phase = Phase.FORCING
            self._forced_at = 0

    def _done(self) -> None:
        self.phase = Phase.DONE
        self._open.reset()
