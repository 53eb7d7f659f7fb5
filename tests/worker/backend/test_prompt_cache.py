"""The host-RAM prompt cache on the real default model: a sequence's state copied out and
into another sequence gives the logits that reading the prompt there gives; the budget holds."""

from __future__ import annotations

import hashlib

import llama_cpp as ll
import numpy as np
from support import THREADS

from llorch.worker.backend.prompt_cache import PREFIX_BLOCK, PromptCache, prefix_hashes

TEXT = " ".join(f"Item {i} costs {i * 3} euros." for i in range(40))


def context(backend):
    params = ll.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.kv_unified, params.swa_full = 1024, 2, False, True
    params.n_threads = params.n_threads_batch = THREADS
    ctx = ll.llama_init_from_model(backend._model, params)
    assert ctx
    return ctx


def decode(ctx, tokens, seq_id, start=0):
    batch = ll.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
            batch.seq_id[i][0], batch.logits[i] = seq_id, i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        assert ll.llama_decode(ctx, batch) == 0
    finally:
        ll.llama_batch_free(batch)


def test_a_saved_state_continues_in_another_sequence(backend):
    tokens = backend.tokenize(TEXT)
    assert len(tokens) > 100
    n_vocab = backend.info().n_vocab
    ctx = context(backend)
    try:
        decode(ctx, tokens[:-1], 0)
        cache = PromptCache(ctx, 1 << 30)
        cache.save(0, tokens[:-1], ())
        assert len(cache) == 1 and cache.used_bytes > 0
        entry, common = cache.longest(tokens, ())
        assert entry is not None and common == len(tokens) - 1
        assert cache.restore(entry, 1)
        decode(ctx, tokens[-1:], 1, start=len(tokens) - 1)  # only the last token is read
        restored = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, 0), shape=(n_vocab,)).copy()
        decode(ctx, tokens[-1:], 0, start=len(tokens) - 1)  # the original sequence, same step
        original = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, 0), shape=(n_vocab,)).copy()
        np.testing.assert_allclose(restored, original, atol=1e-4)
    finally:
        ll.llama_free(ctx)


def test_the_budget_and_lora_keys_hold(backend):
    tokens = backend.tokenize(TEXT)
    ctx = context(backend)
    try:
        decode(ctx, tokens, 0)
        cache = PromptCache(ctx, 1 << 30)
        cache.save(0, tokens, ())
        one = cache.used_bytes
        assert cache.longest(tokens, (("adapter", 1.0),)) == (None, 0)  # other adapters: no
        small = PromptCache(ctx, one - 1)
        small.save(0, tokens, ())
        assert len(small) == 0 and small.used_bytes == 0  # larger than the whole budget
        cache.save(0, tokens[:10], ())  # too short to be worth keeping
        assert len(cache) == 1
    finally:
        ll.llama_free(ctx)


def test_prefix_hashes_are_block_aligned_sha256():
    tokens = list(range(2 * PREFIX_BLOCK + 10))
    hashes = prefix_hashes(tokens)
    assert len(hashes) == 2
    first = np.asarray(tokens[:PREFIX_BLOCK], dtype="<i4").tobytes()
    assert hashes[0] == hashlib.sha256(first).hexdigest()[:16]
    assert prefix_hashes(tokens[: PREFIX_BLOCK - 1]) == []


def test_the_next_turn_reuses_its_prefix_on_another_slot(model_path):
    """Turn 1 ends on a slot; that slot is then busy, so turn 2 lands on the other one, which
    holds something else: the host-RAM cache gives it turn 1's state instead of reading the
    conversation again."""
    from llorch.worker.backend.llama import LlamaCppBackend
    from llorch.worker.backend.protocol import (
        FinishEvent,
        GenerationRequest,
        LoadOptions,
        SamplingParams,
        TokenEvent,
    )
    from llorch.worker.backend.single import generate

    greedy = SamplingParams(temperature=0.0)
    backend = LlamaCppBackend()
    backend.load(
        model_path, LoadOptions(ctx_size=1024, parallel=2, threads=THREADS, cache_bytes=256 << 20)
    )
    try:
        decoder = backend.decoder()
        turn1 = backend.tokenize(TEXT + " The total of the first three items is")
        events = list(generate(decoder, GenerationRequest(tuple(turn1), 8, greedy)))
        answer = [e.token_id for e in events if isinstance(e, TokenEvent)]
        # Turn 1 stays in its slot, not copied to host RAM while the slot is idle, and is
        # published from there.
        assert decoder.cache_summary().entries == 0
        assert prefix_hashes(turn1)[0] in decoder.cache_summary().prefixes
        # Something else fills the other slot, then a long job sharing the first third of
        # turn 1 holds turn 1's slot: taking it (and keeping less than half) copies turn 1
        # and its answer out first.
        other = backend.tokenize("Tell me about the weather in Paris. " * 12)
        list(generate(decoder, GenerationRequest(tuple(other), 2, greedy)))
        assert decoder.cache_summary().entries == 0
        busy = turn1[: len(turn1) // 3] + backend.tokenize(" Now, a poem.", add_special=False)
        decoder.add("busy", GenerationRequest(tuple(busy), 200, greedy))
        assert decoder.cache_summary().entries == 1
        turn2 = turn1 + answer + backend.tokenize(" And of the next two?", add_special=False)
        decoder.add("turn2", GenerationRequest(tuple(turn2), 4, greedy))
        finish: FinishEvent | None = None
        text: list[int] = []
        while finish is None:
            for key, event in decoder.step():
                if key == "turn2" and isinstance(event, TokenEvent):
                    text.append(event.token_id)
                elif key == "turn2" and isinstance(event, FinishEvent):
                    finish = event
        decoder.cancel("busy")
        while decoder.free_slots() < 2:
            decoder.step()
        assert finish.prompt_cached >= len(turn1)  # turn 1 and (most of) its answer
    finally:
        backend.close()
    # The same greedy tokens as reading the whole conversation without any cache.
    plain = LlamaCppBackend()
    plain.load(model_path, LoadOptions(ctx_size=1024, parallel=1, threads=THREADS))
    try:
        events = list(generate(plain.decoder(), GenerationRequest(tuple(turn2), 4, greedy)))
        assert [e.token_id for e in events if isinstance(e, TokenEvent)] == text
    finally:
        plain.close()
