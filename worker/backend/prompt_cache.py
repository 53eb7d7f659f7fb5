"""A prompt cache that follows the conversation: the KV state of finished sequences kept in
host RAM (`--cache-ram MiB`, least recently used out first), so that a conversation's next
turn, or a shared system prompt, is not read again whichever slot it lands on.

A slot keeps its own last tokens in the KV cache, but the next turn of a conversation often
lands on another slot (the first is busy, or was given to someone else). When a new prompt
takes a slot and would cut the finished sequence it holds, that sequence's state is first
copied out with llama.cpp's per-sequence state API (llama_state_seq_get_data) — not when the
sequence ends, which kept a second copy of every idle slot; a new prompt whose longest cached
prefix is here rather than in its slot has that state copied back in
(llama_state_seq_set_data) before the rest of the prompt is read.

`/capacity` publishes hashes of what is cached, block by block, so that an orchestrator can
route a conversation to the worker that holds its prefix: PREFIX_BLOCK-token blocks, each
hash the first 16 hex digits of the sha256 of the little-endian int32 ids of the tokens from
the start of the sequence to the end of that block.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import llama_cpp as ll
import numpy as np

from llorch.worker.backend import seq_state
from llorch.worker.backend.checkpoints import Checkpoint
from llorch.worker.backend.protocol import PREFIX_BLOCK, LoraKey
from llorch.worker.backend.slots import common_prefix

MIN_TOKENS = 64  # shorter sequences are cheap to read again: not worth the memory


def prefix_hashes(tokens: Sequence[int], block: int = PREFIX_BLOCK) -> list[str]:
    """The hash of every whole block-aligned prefix of `tokens`."""
    ids = np.asarray(tokens, dtype="<i4").tobytes()
    return [
        hashlib.sha256(ids[: 4 * end]).hexdigest()[:16]
        for end in range(block, len(tokens) + 1, block)
    ]


@dataclass(frozen=True)
class CachedState:
    tokens: tuple[int, ...]
    lora: LoraKey
    state: bytearray  # llama.cpp's sequence state (seq_state.py)
    # The slot's context checkpoints (checkpoints.py): a prompt sharing only part of this
    # entry goes back to one of them, where the cache cannot be cut (windows, recurrent).
    checkpoints: tuple[Checkpoint, ...] = ()

    @property
    def size(self) -> int:
        return len(self.state) + sum(len(c.data) for c in self.checkpoints)


class PromptCache:
    """Owned by the batch decoder, on the model thread."""

    def __init__(self, ctx: ll.llama_context_p, budget_bytes: int) -> None:
        self._ctx = ctx
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[tuple[tuple[int, ...], LoraKey], CachedState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def save(
        self,
        seq_id: int,
        tokens: Sequence[int],
        lora: LoraKey,
        checkpoints: Sequence[Checkpoint] = (),
    ) -> None:
        """Keep the state of `seq_id`, which holds `tokens` at positions 0..n-1."""
        if len(tokens) < MIN_TOKENS:
            return
        key = (tuple(tokens), lora)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        state = seq_state.copy_out(self._ctx, seq_id, seq_state.FULL, limit=self.budget_bytes)
        if state is None:
            return
        # An entry this one extends is of no more use: the longer one serves its prefixes.
        for old in [k for k in self._entries if k[1] == lora and key[0][: len(k[0])] == k[0]]:
            self._drop(old)
        entry = CachedState(key[0], lora, state, tuple(checkpoints))
        self._entries[key] = entry
        self.used_bytes += entry.size
        while self.used_bytes > self.budget_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def longest(self, prompt: Sequence[int], lora: LoraKey) -> tuple[CachedState | None, int]:
        """The entry sharing the longest prefix with `prompt` under the same adapters."""
        best, best_len = None, 0
        for (tokens, key_lora), entry in self._entries.items():
            if key_lora == lora:
                n = common_prefix(tokens, prompt)
                if n > best_len:
                    best, best_len = entry, n
        return best, best_len

    def restore(self, entry: CachedState, seq_id: int) -> bool:
        """Copy `entry` into `seq_id` (which must be empty); False when llama.cpp refuses."""
        if not seq_state.copy_in(self._ctx, entry.state, seq_id, seq_state.FULL):
            return False
        self._entries.move_to_end((entry.tokens, entry.lora))
        return True

    def token_lists(self) -> Iterable[tuple[int, ...]]:
        return (tokens for tokens, _ in self._entries)

    def _drop(self, key: tuple[tuple[int, ...], LoraKey]) -> None:
        self.used_bytes -= self._entries.pop(key).size
