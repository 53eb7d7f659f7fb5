"""Embeddings of the default (generative) model against llama.cpp called directly: the
hidden states of every token read from a plain embeddings context (no pooling), pooled
here by the last token or the mean."""

from __future__ import annotations

import llama_cpp as ll
import numpy as np
import pytest
from support import THREADS

from llorch.worker.backend.embed import LlamaEmbedder

TEXTS = ["The capital of France is Paris.", "A cat sat on the mat.", "Hi"]


def per_token_states(backend, tokens: list[int]) -> np.ndarray:
    params = ll.llama_context_default_params()
    params.embeddings = True
    params.pooling_type = ll.LLAMA_POOLING_TYPE_NONE
    params.n_ctx = params.n_batch = params.n_ubatch = 512
    params.n_threads = params.n_threads_batch = THREADS
    ctx = ll.llama_init_from_model(backend._model, params)
    assert ctx
    batch = ll.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, True
        batch.n_tokens = len(tokens)
        assert ll.llama_decode(ctx, batch) == 0
        n_embd = ll.llama_model_n_embd(backend._model)
        return np.stack(
            [
                np.ctypeslib.as_array(ll.llama_get_embeddings_ith(ctx, i), shape=(n_embd,)).copy()
                for i in range(len(tokens))
            ]
        )
    finally:
        ll.llama_batch_free(batch)
        ll.llama_free(ctx)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_last_token_pooling_of_several_inputs_in_one_decode(backend):
    inputs = [backend.tokenize(t) for t in TEXTS]
    vectors = backend.embed(inputs)  # all three in one batch, one sequence each
    assert len(vectors) == 3
    for tokens, vector in zip(inputs, vectors, strict=True):
        reference = per_token_states(backend, tokens)[-1]
        assert cosine(np.asarray(vector), reference) >= 0.9999
    # Different texts, different vectors.
    assert cosine(np.asarray(vectors[0]), np.asarray(vectors[1])) < 0.999


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_pooling_choices_match_llama_cpp(backend, pooling):
    embedder = LlamaEmbedder(backend._model, n_ctx=512, threads=THREADS, pooling=pooling)
    try:
        assert embedder.pooling == pooling
        tokens = backend.tokenize(TEXTS[0])
        [vector] = embedder.embed([tokens])
        states = per_token_states(backend, tokens)
        reference = states.mean(axis=0) if pooling == "mean" else states[-1]
        assert cosine(vector, reference) >= 0.9999
    finally:
        embedder.close()
