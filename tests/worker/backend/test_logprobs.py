"""Log-probabilities from the batch decoder against llama.cpp's logits read directly: the
same tokens teacher-forced through a context of their own, log-softmax computed here."""

from __future__ import annotations

import math

import llama_cpp as ll
import numpy as np
import pytest
from support import FRANCE, THREADS

from llorch.worker.backend.protocol import (
    FinishEvent,
    GenerationRequest,
    PromptScores,
    SamplingParams,
    TokenEvent,
)
from llorch.worker.backend.single import generate

GREEDY = SamplingParams(temperature=0.0)


def reference_logprobs(
    backend, prompt: list[int], generated: list[int] = (), cached: int = 0
) -> np.ndarray:
    """log-softmax of the logits at every position, from a fresh context fed as the decoder
    feeds its own (the `cached` prefix it reused, the rest of the prompt in one batch, then
    one token at a time: llama.cpp's kernels depend on the batch shape, so the same shapes
    give the same logits). Rows start at the first position decoded after `cached`."""
    params = ll.llama_context_default_params()
    params.n_ctx = 512
    params.n_batch = 512
    params.n_threads = params.n_threads_batch = THREADS
    ctx = ll.llama_init_from_model(backend._model, params)
    assert ctx
    n_vocab = backend.info().n_vocab
    batch = ll.llama_batch_init(512, 0, 1)
    rows = []

    def decode(tokens: list[int], start: int) -> None:
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, True
        batch.n_tokens = len(tokens)
        assert ll.llama_decode(ctx, batch) == 0
        for i in range(len(tokens)):
            x = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
            x = x.astype(np.float64)
            rows.append(x - x.max() - np.log(np.exp(x - x.max()).sum()))

    try:
        if cached:
            decode(prompt[:cached], 0)
            rows.clear()
        decode(prompt[cached:], cached)
        for i, token in enumerate(generated[:-1]):
            decode([token], len(prompt) + i)
        return np.array(rows)
    finally:
        ll.llama_batch_free(batch)
        ll.llama_free(ctx)


def test_generated_token_logprobs_match_llama_cpp(backend):
    prompt = backend.tokenize(FRANCE)
    request = GenerationRequest(tuple(prompt), 6, GREEDY, logprobs=5)
    events = list(generate(backend.decoder(), request))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert isinstance(events[-1], FinishEvent) and tokens
    cached = events[-1].prompt_cached  # what the decoder reused of its slot's cache
    reference = reference_logprobs(backend, prompt, [t.token_id for t in tokens], cached)
    for i, event in enumerate(tokens):
        row = reference[len(prompt) - cached - 1 + i]
        scored = event.scored
        assert scored is not None and scored.token.token_id == event.token_id
        assert scored.token.logprob == pytest.approx(row[event.token_id], abs=1e-4)
        # Greedy: the chosen token is the most likely one, and the alternatives come in order.
        assert scored.top[0].token_id == event.token_id
        assert [t.logprob for t in scored.top] == sorted(
            (t.logprob for t in scored.top), reverse=True
        )
        best = np.argsort(-row)[:5]
        clear = row[best[3]] - row[best[4]] > 0.1  # the 5th is not a near tie with the 6th
        if clear:
            assert {t.token_id for t in scored.top[:4]} == set(best[:4].tolist())
    # Probabilities, not scores: they sum to at most 1 over the alternatives.
    assert sum(math.exp(t.logprob) for t in tokens[0].scored.top) <= 1.0 + 1e-6


def test_echo_scores_the_prompt_and_max_tokens_0_generates_nothing(backend):
    prompt = backend.tokenize(FRANCE)
    request = GenerationRequest(tuple(prompt), 0, GREEDY, logprobs=1, echo=True)
    events = list(generate(backend.decoder(), request))
    [scores] = [e for e in events if isinstance(e, PromptScores)]
    finish = events[-1]
    assert isinstance(finish, FinishEvent) and finish.tokens_out == 0
    assert not any(isinstance(e, TokenEvent) for e in events)
    assert [s.token.token_id for s in scores.tokens] == prompt
    assert scores.tokens[0].token.logprob is None  # nothing predicts the first token
    reference = reference_logprobs(backend, prompt)
    for position in range(1, len(prompt)):
        expected = reference[position - 1][prompt[position]]
        assert scores.tokens[position].token.logprob == pytest.approx(expected, abs=1e-4)
