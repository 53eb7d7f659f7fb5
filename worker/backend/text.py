"""Turning a stream of token bytes into releasable text.

Two things hold text back: a token may end inside a multi-byte UTF-8 character, and the end of
the text so far may be the beginning of a stop sequence. Neither may reach the client early:
the first would be invalid UTF-8, the second would leak (part of) a stop sequence.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

from llorch.worker.backend.protocol import (
    GenerationEvent,
    Scored,
    SequenceFailed,
    StopReason,
    TokenEvent,
)

Emitted = list[tuple[object, GenerationEvent | SequenceFailed]]


class IncrementalText:
    """Feed token bytes with push(); it returns the text that is now final."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._stops = tuple(s for s in stops if s)
        # errors="replace": a model can emit byte sequences that are not UTF-8 at all; those
        # become U+FFFD, the same as llama.cpp's detokenizer output decoded by Python.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""

    @property
    def holding(self) -> bool:
        """True when some text (or some bytes) are held back."""
        return bool(self._held) or bool(self._decoder.getstate()[0])

    def push(self, piece: bytes) -> tuple[str, str | None]:
        """Add one token's bytes. Returns (released text, matched stop sequence or None).

        After a match, the released text ends right before the stop sequence and the text
        after it is discarded.
        """
        text = self._held + self._decoder.decode(piece)
        match_at, matched = -1, None
        for stop in self._stops:
            at = text.find(stop)
            if at != -1 and (match_at == -1 or at < match_at):
                match_at, matched = at, stop
        if matched is not None:
            self._held = ""
            return text[:match_at], matched
        keep = self._longest_stop_prefix_suffix(text)
        cut = len(text) - keep
        self._held = text[cut:]
        return text[:cut], None

    def flush(self) -> str:
        """Release everything held (generation ended without a stop sequence)."""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop sequence."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


class SequenceText:
    """The token events of one sequence: each token's bytes go through IncrementalText, and
    a token whose text is held back (part of a character, a possible stop sequence) rides on
    the next event, so text released at the very end has an event to carry it.

    Both the llama.cpp batch decoder and the test decoder drive this, so stop sequences and
    UTF-8 behave in tests as they do in production.
    """

    def __init__(self, key: object, stops: Sequence[str], max_tokens: int) -> None:
        self.key = key
        self.max_tokens = max_tokens
        self.n_out = 0
        self._text = IncrementalText(stops)
        self._pending: TokenEvent | None = None

    def push(
        self, token: int, piece: bytes, out: Emitted, scored: Scored | None = None
    ) -> tuple[StopReason, str | None] | None:
        """Add a generated token (not an end-of-generation one). Returns (reason, matched stop
        sequence) when the sequence ends with it, else None."""
        released, matched = self._text.push(piece)
        if self._pending is not None:
            out.append((self.key, self._pending))
            self._pending = None
        event = TokenEvent(index=self.n_out, token_id=token, text=released, scored=scored)
        self.n_out += 1
        if matched is not None:
            out.append((self.key, event))
            return StopReason.STOP_SEQUENCE, matched
        if self.n_out >= self.max_tokens or self._text.holding:
            self._pending = event  # close() releases what is held onto this last event
            if self.n_out >= self.max_tokens:
                return StopReason.MAX_TOKENS, None
            return None
        out.append((self.key, event))
        return None

    def close(self, out: Emitted, matched: str | None) -> None:
        """Release the held event, with the held text unless a stop sequence ended it."""
        if self._pending is not None:
            tail = self._text.flush() if matched is None else ""
            held = self._pending
            out.append(
                (self.key, TokenEvent(held.index, held.token_id, held.text + tail, held.scored))
            )
            self._pending = None
