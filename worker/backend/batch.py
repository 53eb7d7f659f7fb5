"""Continuous batching over one llama.cpp context.

Every step() is one llama_decode of a batch that holds the last sampled token of each
generating sequence plus chunks of the prompts being ingested, each sequence under its own
seq_id, so a new request joins at the next step instead of waiting for the others to finish.
A slot remembers the tokens its sequence left in the KV cache; a new prompt that starts with
them skips re-ingesting that prefix.

Sequences that speculate add their drafts to the same batch (worker/backend/speculative.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import llama_cpp as ll

from llorch.worker.backend import logprobs, sampling
from llorch.worker.backend.checkpoints import Checkpoints
from llorch.worker.backend.drafters import Drafter
from llorch.worker.backend.errors import InferenceError, OutOfMemoryError
from llorch.worker.backend.lora import LoraAdapters
from llorch.worker.backend.prompt_cache import PromptCache, prefix_hashes
from llorch.worker.backend.protocol import (
    CacheSummary,
    FinishEvent,
    GenerationRequest,
    LoraKey,
    MediaSpan,
    PromptScores,
    Scored,
    SequenceFailed,
    SpecOptions,
    StopReason,
    TokenLogprob,
    position,
)
from llorch.worker.backend.slots import SeqState, Slot, common_prefix
from llorch.worker.backend.speculative import Speculation
from llorch.worker.backend.text import Emitted

# A shared prefix shorter than this (a BOS, a role header) is no reason to take a slot that
# holds another conversation when an empty one is free.
MIN_REUSE = 8


class TokenBytes(Protocol):
    def __call__(self, token: int, *, special: bool = False) -> bytes:
        """The bytes a token adds to the output; `special`: a control token's text too."""
        ...


# Encodes a media chunk and decodes its embeddings into a sequence: (context, span, its
# first position, seq_id, n_batch); raises when it cannot (worker/backend/mtmd.py's
# Projector.eval).
MediaEval = Callable[[ll.llama_context_p, MediaSpan, int, int, int], None]


class LlamaBatchDecoder:
    def __init__(
        self,
        ctx: ll.llama_context_p,
        vocab: ll.llama_vocab_p,
        n_vocab: int,
        n_batch: int,
        n_slots: int,
        ctx_per_slot: int,
        token_bytes: TokenBytes,
        backend_sampling: bool = False,
        decode: Callable[[ll.llama_context_p, ll.llama_batch], int] = ll.llama_decode,
        adapters: LoraAdapters | None = None,
        spec: SpecOptions | None = None,
        drafter: Drafter | None = None,
        cache_bytes: int = 0,
        media: MediaEval | None = None,
        checkpoints: Checkpoints | None = None,
    ) -> None:
        self._media = media
        # Prefix reuse where the cache cannot be cut back (windows, recurrent state).
        self._checkpoints = checkpoints
        self._media_turn = 0
        self._adapters = adapters
        # Finished sequences' KV state in host RAM (--cache-ram): see prompt_cache.py.
        self._cache = PromptCache(ctx, cache_bytes) if cache_bytes > 0 else None
        self._summary: CacheSummary | None = None  # recomputed when the caches change
        self._speculation = Speculation(ctx, spec or SpecOptions(), drafter)
        self._turn = 0
        self._decode = decode  # llama_decode; tests pass a wrapper to make it fail
        self._ctx = ctx
        self._vocab = vocab
        self._n_vocab = n_vocab
        self._n_batch = n_batch
        self._ctx_per_slot = ctx_per_slot
        self._token_bytes = token_bytes
        self._backend_sampling = backend_sampling
        self._slots = [Slot(i) for i in range(n_slots)]
        self._by_key: dict[object, Slot] = {}
        self._batch = ll.llama_batch_init(n_batch, 0, 1)

    @property
    def n_slots(self) -> int:
        return len(self._slots)

    @property
    def ctx_per_slot(self) -> int:
        return self._ctx_per_slot

    def free_slots(self) -> int:
        return sum(1 for s in self._slots if s.seq is None)

    def kv_used(self) -> int:
        return sum(len(s.cached) for s in self._slots if s.seq is not None)

    def cache_summary(self) -> CacheSummary:
        """Hashes of the prefixes held in the slots and the host-RAM cache, and its use."""
        if self._summary is None:
            lists: list[Sequence[int]] = [s.cached for s in self._slots]
            lists += list(self._cache.token_lists()) if self._cache is not None else []
            hashes = {h for tokens in lists for h in prefix_hashes(tokens)}
            self._summary = CacheSummary(
                prefixes=tuple(sorted(hashes)),
                entries=len(self._cache) if self._cache is not None else 0,
                bytes_used=self._cache.used_bytes if self._cache is not None else 0,
                bytes_budget=self._cache.budget_bytes if self._cache is not None else 0,
                checkpoints=self._checkpoints.count if self._checkpoints is not None else 0,
                checkpoint_bytes=(
                    self._checkpoints.bytes_used if self._checkpoints is not None else 0
                ),
            )
        return self._summary

    def _save_before_reuse(self, slot: Slot, request: GenerationRequest) -> None:
        """A finished sequence's state stays in its slot until another prompt takes the slot;
        only then, and only if that prompt keeps less than half of it, is it copied to the
        host-RAM cache (as llama-server saves a slot's prompt when a new task takes the slot):
        a copy made when each request ends held a second copy of every idle slot in host
        memory, and a next turn that drops only the previous answer would pay for copying the
        whole conversation out before its first token."""
        assert self._cache is not None
        if slot.cached and self._kept(slot, request) < len(slot.cached) // 2:
            kept = self._checkpoints.of(slot.seq_id) if self._checkpoints is not None else ()
            self._cache.save(slot.seq_id, slot.cached, slot.cached_lora, kept)
            self._summary = None

    def _restore_cached(self, slot: Slot, request: GenerationRequest) -> None:
        """The host-RAM cache holds a longer prefix of this prompt than the slot: copy it in
        (a conversation's next turn that lands on another slot)."""
        assert self._cache is not None
        entry, common = self._cache.longest(request.prompt_tokens, request.lora)
        if entry is None or common <= self._reusable(slot, request):
            return
        ll.llama_memory_seq_rm(ll.llama_get_memory(self._ctx), slot.seq_id, -1, -1)
        if self._checkpoints is not None:
            self._checkpoints.clear(slot.seq_id)
        if self._cache.restore(entry, slot.seq_id):
            slot.cached, slot.cached_lora = list(entry.tokens), entry.lora
            if self._checkpoints is not None:
                self._checkpoints.adopt(slot.seq_id, entry.checkpoints)
        else:
            slot.cached.clear()
        self._summary = None

    def close(self) -> None:
        self._speculation.close()
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None

    # -- admission -------------------------------------------------------------------------

    def add(self, key: object, request: GenerationRequest) -> None:
        prompt = request.prompt_tokens
        if not prompt:
            raise InferenceError("empty prompt: nothing to condition on")
        free = [s for s in self._slots if s.seq is None]
        if not free:
            raise InferenceError("no free slot")
        # The slot whose cached tokens share the longest prefix with this prompt, decoded
        # with the same adapters (an adapter changes the keys and values in the cache).
        slot = max(free, key=lambda s: self._reusable(s, request))
        if self._reusable(slot, request) < MIN_REUSE:
            # Nothing worth keeping anywhere: an empty slot, so that no idle conversation is
            # cut (and copied to host RAM) for the sake of a token or two.
            slot = next((s for s in free if not s.cached), slot)
        if self._cache is not None:
            self._save_before_reuse(slot, request)
        chain = sampling.build_chain(
            request.sampling, self._n_vocab, self._ctx_per_slot, self._vocab
        )
        # Media placeholders are no tokens of the vocabulary: penalties see the text only.
        sampling.accept_prompt(chain, [t for t in prompt if t >= 0] if request.media else prompt)
        leader = None if request.echo else self._reading(request)
        if leader is not None:
            self._follow(leader, slot, key, request, chain)
            return
        if self._cache is not None and not request.echo:
            self._restore_cached(slot, request)
        self._summary = None
        keep = self._kept(slot, request)
        for span in request.media:  # an image is decoded whole, or not kept at all
            if span.start < keep < span.start + span.length:
                keep = span.start
        memory = ll.llama_get_memory(self._ctx)
        if self._checkpoints is not None and keep < len(slot.cached):
            # A window or a recurrent state cut at `keep` would not describe the tokens
            # before it: the latest checkpoint at or before `keep` instead (checkpoints.py).
            keep = self._checkpoints.cut(slot.seq_id, keep, len(slot.cached))
        # (the cache holds positions: after an M-RoPE image they run behind the token count)
        cut = position(request.media, keep)
        if keep < len(slot.cached) and not ll.llama_memory_seq_rm(memory, slot.seq_id, cut, -1):
            # Some caches cannot drop a tail (llama.h); start this sequence from scratch.
            ll.llama_memory_seq_rm(memory, slot.seq_id, -1, -1)
            keep = 0
            if self._checkpoints is not None:
                self._checkpoints.clear(slot.seq_id)
        del slot.cached[keep:]
        slot.cached_lora = request.lora
        slot.seq = SeqState(key, request, chain, list(prompt[keep:]), reused=keep)
        self._by_key[key] = slot
        if request.echo:
            first = TokenLogprob(prompt[0], self._token_bytes(prompt[0]), None)
            slot.seq.echo.prompt_scores.append(Scored(first))
        # Log-probabilities need the logits on the host: such a chain is never moved. Nor is
        # a reasoning budget's: a forced token replaces what the chain would sample, which
        # the graph samples before the host could say so (llama.cpp's common sampler refuses
        # the combination too).
        scores = request.logprobs is not None or request.echo
        budget = request.reasoning_budget is not None
        if self._backend_sampling and sampling.runs_in_graph(chain) and not (scores or budget):
            slot.seq.in_graph = bool(ll.llama_set_sampler(self._ctx, slot.seq_id, chain.handle))
        self._speculation.decide(slot)

    def _kept(self, slot: Slot, request: GenerationRequest) -> int:
        """How many of the slot's cached tokens `request` keeps. At least one prompt token is
        decoded again: its logits give the first token. Echo scores every prompt token, so it
        reads the whole prompt."""
        if request.echo:
            return 0
        return min(self._reusable(slot, request), len(request.prompt_tokens) - 1)

    def _reusable(self, slot: Slot, request: GenerationRequest) -> int:
        """How many of the prompt's first tokens the slot's cache holds, as this request
        would have computed them."""
        if slot.cached_lora != request.lora:
            return 0
        return common_prefix(slot.cached, request.prompt_tokens)

    def _reading(self, request: GenerationRequest) -> Slot | None:
        """A sequence still reading exactly this prompt, whose cache a new one can copy."""
        for slot in self._slots:
            seq = slot.seq
            if (
                seq is not None
                and seq.request.prompt_tokens == request.prompt_tokens
                and seq.request.lora == request.lora
                and seq.first_token_at == 0.0
                and seq.shared.leader is None
                and not seq.in_graph  # its logits must be on the host to sample from
                and not seq.request.echo
            ):
                return slot
        return None

    def _follow(
        self,
        leader: Slot,
        slot: Slot,
        key: object,
        request: GenerationRequest,
        chain: sampling.SamplerChain,
    ) -> None:
        # The copy replaces the whole of this slot's cache stream (llama.cpp copies streams
        # whole when the KV cache is not unified).
        ll.llama_memory_seq_rm(ll.llama_get_memory(self._ctx), slot.seq_id, -1, -1)
        slot.cached.clear()
        if self._checkpoints is not None:
            self._checkpoints.clear(slot.seq_id)
        slot.seq = SeqState(key, request, chain, [], reused=len(request.prompt_tokens))
        slot.seq.shared.leader = leader
        assert leader.seq is not None
        leader.seq.shared.followers.append(slot)
        self._by_key[key] = slot
        self._speculation.decide(slot)

    def _fork(self, leader: Slot, follower: Slot, index: int, out: Emitted, now: float) -> None:
        """The leader has read the prompt: copy its cache, and sample the follower's first
        token from the same logits with the follower's own chain (its own seed)."""
        seq = follower.seq
        assert seq is not None
        ll.llama_memory_seq_cp(
            ll.llama_get_memory(self._ctx), leader.seq_id, follower.seq_id, -1, -1
        )
        follower.cached = list(leader.cached)
        seq.shared.leader = None
        seq.first_token_at = now
        self._sample_and_emit(follower, index, out)

    def cancel(self, key: object) -> None:
        slot = self._by_key.get(key)
        if slot is not None and slot.seq is not None:
            slot.seq.cancelled = True

    # -- one decode step -------------------------------------------------------------------

    def step(self) -> Emitted:
        out: Emitted = []
        for slot in self._slots:
            if slot.seq is not None and slot.seq.cancelled:
                self._finish(slot, StopReason.CANCELLED, out)
        if self._media is not None:
            self._ingest_media(out)
        budget = self._n_batch
        group = self._next_group()
        self._speculation.propose(self._slots, group)
        while True:
            outputs, placed = self._fill_batch(budget, group)
            n_tokens = self._batch.n_tokens
            if n_tokens == 0:
                return out
            if self._adapters is not None:
                self._adapters.apply(self._ctx, group)
            started = time.perf_counter()
            rc = self._decode(self._ctx, self._batch)
            if rc == 0:
                self._counted(outputs, n_tokens)
                break
            self._take_back(placed)
            if rc != 1:
                self._fail_all(InferenceError(f"llama_decode failed with status {rc}"), out)
                return out
            # No room in the KV cache for this batch (status 1): as llama-server does, retry
            # with half the tokens; a single token that finds no room means its sequence can
            # never go on, and only that sequence ends with an error.
            if n_tokens == 1:
                self._fail(placed[0][0], out)
                budget = self._n_batch
            else:
                budget = max(1, n_tokens // 2)
        now = time.perf_counter()
        for slot in self._slots:
            if slot.seq is not None and slot.seq.echo.to_score:
                self._score_prompt(slot.seq)
        for slot, index in outputs:
            seq = slot.seq
            assert seq is not None
            if seq.first_token_at == 0.0:
                seq.first_token_at = now
                if seq.request.echo:  # the prompt is read: its scores go before any token
                    out.append((seq.key, PromptScores(tuple(seq.echo.prompt_scores))))
                if seq.request.max_tokens == 0:
                    self._finish(slot, StopReason.MAX_TOKENS, out)
                    continue
                for follower in seq.shared.followers:
                    self._fork(slot, follower, index, out, now)
                seq.shared.followers.clear()
            if seq.spec.verifying:
                emit = functools.partial(self._on_token, slot, out=out)
                self._speculation.verify(slot, index, functools.partial(self._sample, seq), emit)
            else:
                self._sample_and_emit(slot, index, out)
        self._speculation.stepped(time.perf_counter() - started)
        return out

    def _counted(self, outputs: list[tuple[Slot, int]], n_tokens: int) -> None:
        """The decode's positions with logits per sequence (its token and any draft), and
        whether the batch read no prompt chunk, for speculation's cost model."""
        counts = [(s.seq_id, 1 + len(s.seq.spec.verifying)) for s, _ in outputs if s.seq]
        self._speculation.decoded(counts, pure=sum(n for _, n in counts) == n_tokens)

    def _ingest_media(self, out: Emitted) -> None:
        """Encode and decode one media chunk a sequence has reached, in a decode of its own
        (mtmd's helper), one per step, taking turns: the other sequences' tokens wait one
        image at most."""
        waiting = [
            s
            for s in self._slots
            if s.seq is not None and s.seq.to_ingest and s.seq.to_ingest[0] < 0
        ]
        if not waiting or self._media is None:
            return
        self._media_turn += 1
        slot = waiting[self._media_turn % len(waiting)]
        seq = slot.seq
        assert seq is not None
        at = len(slot.cached)
        span = next((m for m in seq.request.media if m.start == at), None)
        try:
            if span is None:
                raise InferenceError(f"no media chunk starts at prompt position {at}")
            pos = position(seq.request.media, at)
            self._media(self._ctx, span, pos, slot.seq_id, self._n_batch)
        except Exception as exc:
            ll.llama_memory_seq_rm(ll.llama_get_memory(self._ctx), slot.seq_id, -1, -1)
            slot.cached.clear()
            error = exc if isinstance(exc, InferenceError) else InferenceError(str(exc))
            out.append((seq.key, SequenceFailed(error)))
            self._release(slot)
            return
        slot.cached.extend(seq.to_ingest[: span.length])
        del seq.to_ingest[: span.length]
        self._summary = None

    def _sample_and_emit(self, slot: Slot, index: int, out: Emitted) -> None:
        seq = slot.seq
        assert seq is not None
        token = self._sample(seq, index)
        scored = None
        if seq.request.logprobs is not None:
            distribution = logprobs.log_softmax(self._ctx, index, self._n_vocab)
            scored = logprobs.score(distribution, token, seq.request.logprobs, self._token_bytes)
        self._on_token(slot, token, out, scored)

    def _score_prompt(self, seq: SeqState) -> None:
        top = seq.request.logprobs or 0
        for index, predicted in seq.echo.to_score:
            distribution = logprobs.log_softmax(self._ctx, index, self._n_vocab)
            seq.echo.prompt_scores.append(
                logprobs.score(distribution, predicted, top, self._token_bytes)
            )
        seq.echo.to_score.clear()

    def _sample(self, seq: SeqState, index: int) -> int:
        forced = self._forced(seq)
        if forced is not None:
            return forced
        if seq.in_graph:
            token = ll.llama_get_sampled_token_ith(self._ctx, index)
            if token >= 0:
                # The chain's state advances on accept, not when the token is read (llama.h).
                sampling.accept(seq.chain, token)
                return int(token)
            # LLAMA_TOKEN_NULL: the graph sampled nothing for this output; do it here.
        return sampling.sample(seq.chain, self._ctx, index, self._n_vocab)

    def _forced(self, seq: SeqState) -> int | None:
        """The reasoning budget's closing-tag token due now, accepted by the chain as a
        sampled one is (its grammar and penalties see it); None: the chain samples. A grammar
        that does not allow the token ends the forcing: the grammar's output is what the
        client parses, and accepting a token it refuses would abort llama.cpp."""
        if seq.budget is None:
            return None
        token = seq.budget.forced()
        if token is None:
            return None
        if not sampling.allows(seq.chain, token):
            seq.budget.give_up()
            return None
        sampling.accept(seq.chain, token)
        return token

    def _next_group(self) -> LoraKey:
        """The adapter set whose sequences this step decodes: when requests with different
        sets have work, they take turns, one step each, so no set starves another."""
        groups = sorted(
            {
                s.seq.request.lora
                for s in self._slots
                if s.seq is not None and (s.seq.next_token is not None or s.seq.to_ingest)
            }
        )
        if not groups:
            return ()
        self._turn += 1
        return groups[self._turn % len(groups)]

    def _fill_batch(
        self, budget: int, group: LoraKey = ()
    ) -> tuple[list[tuple[Slot, int]], list[tuple[Slot, int]]]:
        """Put at most `budget` tokens into the batch. Returns the (slot, batch index) pairs
        whose logits are read, and (slot, cached length before) for every slot that got
        tokens, so that a failed decode can take them back."""
        batch = self._batch
        n = 0
        outputs: list[tuple[Slot, int]] = []
        placed: list[tuple[Slot, int]] = []

        def put(token: int, slot: Slot, logits: bool, shift: int) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = len(slot.cached) - shift
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot.seq_id
            batch.logits[n] = logits
            slot.cached.append(token)
            n += 1

        # One token for every generating sequence first, so they never wait on prompts, and
        # its draft after it, as far as that leaves a place for each sequence after it.
        generating = [
            s
            for s in self._slots
            if s.seq is not None and s.seq.request.lora == group and s.seq.next_token is not None
        ]
        for i, slot in enumerate(generating):
            seq = slot.seq
            assert seq is not None and seq.next_token is not None
            if n >= budget:
                break
            placed.append((slot, len(slot.cached)))
            outputs.append((slot, n))
            shift = _shift(seq.request.media, len(slot.cached))
            put(seq.next_token, slot, True, shift)
            seq.next_token = None
            seq.spec.verifying = seq.spec.proposed[: max(0, budget - n - (len(generating) - i - 1))]
            seq.spec.proposed = []
            for token in seq.spec.verifying:
                put(token, slot, True, shift)
        # Then prompt chunks, in slot order, as far as the batch has room.
        for slot in self._slots:
            seq = slot.seq
            if seq is None or seq.request.lora != group or not seq.to_ingest or n >= budget:
                continue
            chunk = seq.to_ingest[: budget - n]
            if seq.request.media:  # text up to the next image, which _ingest_media decodes
                chunk = chunk[: next((j for j, t in enumerate(chunk) if t < 0), len(chunk))]
                if not chunk:
                    continue
            # (a point inside an image is never reached here: images are read whole, and the
            # checkpoints of a prompt with images are taken in its text)
            if self._checkpoints is not None and self._checkpoints.enabled:
                chunk = self._checkpoint_chunk(slot, chunk)
            placed.append((slot, len(slot.cached)))
            del seq.to_ingest[: len(chunk)]
            prompt = seq.request.prompt_tokens
            shift = _shift(seq.request.media, len(slot.cached))  # (no image inside a chunk)
            for j, token in enumerate(chunk):
                last = j == len(chunk) - 1 and not seq.to_ingest
                if last:
                    outputs.append((slot, n))
                elif seq.request.echo:  # these logits score the next prompt token
                    seq.echo.to_score.append((n, prompt[len(slot.cached) + 1]))
                put(token, slot, last or seq.request.echo, shift)
        batch.n_tokens = n
        return outputs, placed

    def _checkpoint_chunk(self, slot: Slot, chunk: list[int]) -> list[int]:
        """A checkpoint where the prompt's reading has reached one of its points, and the
        chunk cut at the next point, so that the state there can be copied out."""
        assert self._checkpoints is not None and slot.seq is not None
        at = len(slot.cached)
        points = self._checkpoints.boundaries(len(slot.seq.request.prompt_tokens))
        if at in points:
            self._checkpoints.take(slot.seq_id, at)
            self._summary = None
        following = [p for p in points if p > at]
        return chunk[: min(following) - at] if following else chunk

    def _take_back(self, placed: list[tuple[Slot, int]]) -> None:
        """Undo _fill_batch after a failed decode: the tokens go back to where they came
        from. llama.cpp restores the cache itself on failure (llama.h); the removal makes
        sure no cell of the failed batch stays behind."""
        memory = ll.llama_get_memory(self._ctx)
        for slot, before in placed:
            seq = slot.seq
            assert seq is not None
            tokens = slot.cached[before:]
            del slot.cached[before:]
            seq.echo.to_score.clear()
            ll.llama_memory_seq_rm(memory, slot.seq_id, position(seq.request.media, before), -1)
            if seq.output.n_out == 0:
                seq.to_ingest[:0] = tokens  # a prompt chunk: nothing generated yet
            else:
                seq.next_token = tokens[0]  # the one generated token, and its draft
                seq.spec.proposed, seq.spec.verifying = tokens[1:], []

    def _fail(self, slot: Slot, out: Emitted) -> None:
        seq = slot.seq
        assert seq is not None
        ll.llama_memory_seq_rm(ll.llama_get_memory(self._ctx), slot.seq_id, -1, -1)
        slot.cached.clear()
        if self._checkpoints is not None:
            self._checkpoints.clear(slot.seq_id)
        error = OutOfMemoryError(
            "the KV cache has no room for this sequence: llama_decode found no cell for its "
            "next token even alone in the batch (status 1)"
        )
        out.append((seq.key, SequenceFailed(error)))
        self._release(slot)

    def _fail_all(self, error: Exception, out: Emitted) -> None:
        memory = ll.llama_get_memory(self._ctx)
        for slot in self._slots:
            if slot.seq is not None:
                # The cache may hold part of this batch: forget the whole sequence.
                ll.llama_memory_seq_rm(memory, slot.seq_id, -1, -1)
                slot.cached.clear()
                if self._checkpoints is not None:
                    self._checkpoints.clear(slot.seq_id)
                out.append((slot.seq.key, SequenceFailed(error)))
                self._release(slot)

    # -- per-token bookkeeping ---------------------------------------------------------------

    def _on_token(self, slot: Slot, token: int, out: Emitted, scored: Scored | None = None) -> None:
        seq = slot.seq
        assert seq is not None
        if ll.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, StopReason.EOS, out)
            return
        # A control token adds no text unless the request preserves it (a tool-call format's
        # markup, which the chat layer parses).
        piece = self._token_bytes(token, special=token in seq.request.preserved_tokens)
        if seq.budget is not None:
            seq.budget.feed(token, piece)
        ended = seq.output.push(token, piece, out, scored)
        if ended is not None:
            self._finish(slot, ended[0], out, ended[1])
        else:
            seq.next_token = token

    def _finish(
        self, slot: Slot, reason: StopReason, out: Emitted, matched: str | None = None
    ) -> None:
        seq = slot.seq
        assert seq is not None
        seq.output.close(out, matched)
        now = time.perf_counter()
        started = seq.first_token_at or now
        out.append(
            (
                seq.key,
                FinishEvent(
                    stop_reason=reason,
                    tokens_out=seq.output.n_out,
                    decode_time_ms=(now - started) * 1000.0,
                    prompt_tokens=len(seq.request.prompt_tokens),
                    seed=seq.chain.seed,
                    stop_sequence_matched=matched,
                    prompt_time_ms=(started - seq.added_at) * 1000.0,
                    prompt_cached=seq.reused,
                    drafted=seq.spec.drafted,
                    accepted=seq.spec.accepted,
                    draft_saved_ms=self._speculation.saved_ms(slot),
                ),
            )
        )
        self._release(slot)

    def _release(self, slot: Slot) -> None:
        seq = slot.seq
        if seq is None:
            return
        if seq.in_graph:  # detach before freeing: the context keeps the pointer
            ll.llama_set_sampler(self._ctx, slot.seq_id, None)
        for follower in seq.shared.followers:  # the leader left before its prompt was read
            waiting = follower.seq
            assert waiting is not None
            waiting.shared.leader, waiting.reused = None, 0
            waiting.to_ingest = list(waiting.request.prompt_tokens)
        seq.shared.followers.clear()
        if seq.shared.leader is not None and seq.shared.leader.seq is not None:
            seq.shared.leader.seq.shared.followers.remove(slot)
        sampling.free_chain(seq.chain)
        self._by_key.pop(seq.key, None)
        slot.seq = None
        self._summary = None


def _shift(media: Sequence[MediaSpan], index: int) -> int:
    """How far the position of the token at `index` runs behind it (M-RoPE images)."""
    return index - position(media, index) if media else 0
