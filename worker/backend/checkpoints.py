"""Context checkpoints: prefix reuse for caches that cannot be cut back to a shorter prefix.

A sliding-window layer that keeps only its window (`swa_full` off) has dropped the cells
older than the window, and a recurrent layer (Mamba-2, the recurrent half of Qwen 3.5 or
Falcon-H1) holds one state for the whole sequence: after `llama_memory_seq_rm(seq, n, -1)`
neither describes the first n tokens any more. So while a prompt is read, the part of a
slot's state that cannot be rolled back is copied out (llama.cpp's partial sequence state,
`llama_state_seq_get_data_ext` with LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY: the window of the
sliding-window layers, or the recurrent state), and a next request that shares only part of
what the slot holds restores the latest checkpoint at or before the shared prefix and reads
on from there. llama-server does the same (`--ctx-checkpoints`, llama.cpp PR 15293): it
checkpoints 4 and 4 + n_ubatch tokens before a prompt's end (a chat's next turn re-renders
the generation prompt and the answer after them) and every `--checkpoint-min-step` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import llama_cpp as ll

from llorch.worker.backend import seq_state
from llorch.worker.backend.seq_state import PARTIAL

END_OFFSET = 4  # llama-server's checkpoint_offsets: 4 and 4 + n_ubatch before the end
MIN_PROMPT = 64  # shorter prompts are cheap to read again (as prompt_cache.MIN_TOKENS)


@dataclass(frozen=True)
class Checkpoint:
    n_tokens: int  # the state after this many tokens of the slot's cache
    data: bytearray  # llama.cpp's partial sequence state (seq_state.py)


class Checkpoints:
    """The checkpoints of every slot of one context; owned by the batch decoder."""

    def __init__(
        self,
        ctx: ll.llama_context_p,
        model: ll.llama_model_p,
        *,
        swa_full: bool,
        per_slot: int,
        every: int,
        n_ubatch: int,
    ) -> None:
        self._ctx = ctx
        self._n_swa = 0 if swa_full else int(ll.llama_model_n_swa(model))
        self._recurrent = bool(
            ll.llama_model_is_recurrent(model) or ll.llama_model_is_hybrid(model)
        )
        self.per_slot = per_slot
        self.every = every
        self._n_ubatch = n_ubatch
        self._slots: dict[int, list[Checkpoint]] = {}
        self.bytes_used = 0
        self.taken = 0  # counters for /metrics
        self.restored = 0

    @property
    def limited(self) -> bool:
        """Whether this model's cache may be unable to keep a shorter prefix."""
        return self._n_swa > 0 or self._recurrent

    @property
    def enabled(self) -> bool:
        """Whether checkpoints are taken (the cache needs them, and --ctx-checkpoints > 0)."""
        return self.per_slot > 0 and self.limited

    @property
    def count(self) -> int:
        return sum(len(c) for c in self._slots.values())

    def boundaries(self, prompt_len: int) -> set[int]:
        """Where a prompt's reading stops for a checkpoint (tokens read so far)."""
        if not self.enabled or prompt_len < MIN_PROMPT:
            return set()
        points = {prompt_len - END_OFFSET, prompt_len - END_OFFSET - self._n_ubatch}
        if self.every > 0:
            points.update(range(self.every, prompt_len - END_OFFSET, self.every))
        return {p for p in points if 0 < p < prompt_len}

    def take(self, seq_id: int, n_tokens: int) -> None:
        """Copy out the state of `seq_id`, which holds `n_tokens` tokens now."""
        mine = self._slots.setdefault(seq_id, [])
        if any(c.n_tokens == n_tokens for c in mine):
            return
        memory = ll.llama_get_memory(self._ctx)
        if ll.llama_memory_seq_pos_min(memory, seq_id) < 0:
            return  # nothing cached
        data = seq_state.copy_out(self._ctx, seq_id, PARTIAL)
        if data is None:
            return
        mine.append(Checkpoint(n_tokens, data))
        mine.sort(key=lambda c: c.n_tokens)
        self.bytes_used += len(data)
        self.taken += 1
        while len(mine) > self.per_slot:  # the oldest out first, as llama-server does
            self.bytes_used -= len(mine.pop(0).data)

    def cut(self, seq_id: int, keep: int, cached: int) -> int:
        """The slot holds `cached` tokens and `keep` of them are wanted: how many can be kept.
        `keep` itself where the cache can be cut there; else the tokens of the latest
        checkpoint at or before `keep`, restored into the slot; else 0. Checkpoints past
        what is kept are dropped. The caller removes the cells from the result on."""
        mine = self._slots.get(seq_id, [])
        if keep >= cached or keep == 0 or not self.limited or self._can_cut(seq_id, keep):
            self.drop_after(seq_id, keep)
            return keep
        usable = [c for c in mine if c.n_tokens <= keep]
        result = 0
        if usable:
            best = usable[-1]
            if seq_state.copy_in(self._ctx, best.data, seq_id, PARTIAL):
                result = best.n_tokens
                self.restored += 1
        self.drop_after(seq_id, result)
        return result

    def _can_cut(self, seq_id: int, keep: int) -> bool:
        if self._recurrent:
            return False  # one state for the whole sequence
        # The window before `keep` must still be cached (llama-server's pos_min_thold).
        pos_min = ll.llama_memory_seq_pos_min(ll.llama_get_memory(self._ctx), seq_id)
        return 0 <= pos_min < max(1, keep - self._n_swa)

    def of(self, seq_id: int) -> tuple[Checkpoint, ...]:
        """The checkpoints of `seq_id` (for the host-RAM cache, which keeps them)."""
        return tuple(self._slots.get(seq_id, []))

    def adopt(self, seq_id: int, checkpoints: tuple[Checkpoint, ...]) -> None:
        """`seq_id` now holds the state these checkpoints were taken of (a cached entry)."""
        self.clear(seq_id)
        self._slots[seq_id] = list(checkpoints)
        self.bytes_used += sum(len(c.data) for c in checkpoints)

    def drop_after(self, seq_id: int, n_tokens: int) -> None:
        mine = self._slots.get(seq_id, [])
        for c in [c for c in mine if c.n_tokens > n_tokens]:
            mine.remove(c)
            self.bytes_used -= len(c.data)

    def clear(self, seq_id: int) -> None:
        self.drop_after(seq_id, -1)
