"""Log-probabilities from llama.cpp's logits: log-softmax of the raw logits of one output of
the last decode, before any sampler has touched them (the value OpenAI reports)."""

from __future__ import annotations

from collections.abc import Callable

import llama_cpp as ll
import numpy as np

from llorch.worker.backend.protocol import Scored, TokenLogprob

MAX_TOP = 20  # OpenAI's bound on top_logprobs


def log_softmax(ctx: ll.llama_context_p, index: int, n_vocab: int) -> np.ndarray:
    """Log-probabilities over the vocabulary at batch output `index` (float64: the sums of
    262k exponentials need the precision)."""
    pointer = ll.llama_get_logits_ith(ctx, index)
    logits = np.ctypeslib.as_array(pointer, shape=(n_vocab,)).astype(np.float64)
    peak = logits.max()
    return logits - (peak + np.log(np.exp(logits - peak).sum()))


def score(logprobs: np.ndarray, token: int, top: int, piece: Callable[[int], bytes]) -> Scored:
    """`token`'s log-probability and the `top` most likely tokens, most likely first."""
    alternatives: tuple[TokenLogprob, ...] = ()
    if top > 0:
        best = np.argpartition(logprobs, -top)[-top:]
        best = best[np.argsort(-logprobs[best], kind="stable")]
        alternatives = tuple(TokenLogprob(int(t), piece(int(t)), float(logprobs[t])) for t in best)
    return Scored(TokenLogprob(token, piece(token), float(logprobs[token])), alternatives)
