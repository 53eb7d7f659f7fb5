"""SamplingParams -> llama.cpp's native sampler chain.

The order follows llama.cpp's own common sampler (grammar, logit bias, penalties, top-k,
typical, top-p, min-p, temperature, then the final pick), so the same parameters select the
same tokens as llama-cli / llama-server. A sampler is added only when its parameter changes
anything: a disabled sampler still walks the whole vocabulary (262k entries for Gemma 3) on
every token.
"""

from __future__ import annotations

import ctypes
import math
import random
from dataclasses import dataclass

import llama_cpp as ll
import numpy as np

from llorch.worker.backend.errors import InvalidRequestError
from llorch.worker.backend.grammar import check_trigger_patterns
from llorch.worker.backend.protocol import MAX_SEED, SamplingParams


@dataclass(frozen=True)
class SamplerChain:
    handle: ll.llama_sampler_p
    seed: int | None  # None for greedy chains, which draw nothing
    # The penalties sampler inside the chain, fed the prompt tokens on their own: the grammar
    # sampler must only ever see generated tokens.
    penalties: ll.llama_sampler_p | None = None
    # The grammar sampler, kept outside the chain (sample() runs it only when needed); a
    # forced token must satisfy it too (allows()).
    grammar: ll.llama_sampler_p | None = None


def resolve_seed(params: SamplingParams) -> int:
    if params.seed is not None:
        if not 0 <= params.seed <= MAX_SEED:
            raise ValueError(f"seed {params.seed} outside 0..{MAX_SEED}")
        return params.seed
    return random.randrange(MAX_SEED + 1)


def _uses_penalties(params: SamplingParams) -> bool:
    return (
        params.repetition_penalty != 1.0
        or params.presence_penalty != 0.0
        or params.frequency_penalty != 0.0
    )


def build_chain(
    params: SamplingParams,
    n_vocab: int,
    penalty_window: int,
    vocab: ll.llama_vocab_p | None = None,
) -> SamplerChain:
    chain_params = ll.llama_sampler_chain_default_params()
    chain_params.no_perf = True
    chain = ll.llama_sampler_chain_init(chain_params)
    try:
        return _fill(chain, params, n_vocab, penalty_window, vocab)
    except BaseException:
        ll.llama_sampler_free(chain)
        raise


def _fill(
    chain: ll.llama_sampler_p,
    params: SamplingParams,
    n_vocab: int,
    penalty_window: int,
    vocab: ll.llama_vocab_p | None,
) -> SamplerChain:
    def add(sampler: ll.llama_sampler_p) -> ll.llama_sampler_p:
        ll.llama_sampler_chain_add(chain, sampler)
        return sampler

    if params.grammar is not None and vocab is None:
        raise InvalidRequestError("a grammar needs the model's vocabulary")
    if params.logit_bias:
        bad = [t for t, _ in params.logit_bias if not 0 <= t < n_vocab]
        if bad:
            raise InvalidRequestError(f"logit_bias token ids outside 0..{n_vocab - 1}: {bad[:5]}")
        biases = (ll.llama_logit_bias * len(params.logit_bias))()
        for entry, (token, bias) in zip(biases, params.logit_bias, strict=True):
            entry.token, entry.bias = token, bias
        add(ll.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
    penalties = None
    if _uses_penalties(params):
        # Whole-context window, as Hugging Face's repetition_penalty looks at every input id.
        penalties = add(
            ll.llama_sampler_init_penalties(
                n_vocab,
                penalty_window,
                params.repetition_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
        )
    # The grammar stays outside the chain: sample() checks the chain's pick against it and
    # only runs it over the whole vocabulary when the pick does not fit (llama.cpp's common
    # sampler does the same: common/sampling.cpp, grammar_first off).
    grammar = None
    if params.grammar is not None:
        assert vocab is not None
        grammar = _grammar(vocab, params.grammar, params.grammar_triggers)
    if params.greedy:
        add(ll.llama_sampler_init_greedy())
        return SamplerChain(chain, None, penalties, grammar)
    if params.top_k > 0:
        add(ll.llama_sampler_init_top_k(params.top_k))
    if params.typical_p < 1.0:
        add(ll.llama_sampler_init_typical(params.typical_p, 1))
    if params.top_p < 1.0:
        add(ll.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(ll.llama_sampler_init_min_p(params.min_p, 1))
    add(ll.llama_sampler_init_temp(params.temperature))
    seed = resolve_seed(params)
    add(ll.llama_sampler_init_dist(seed))
    return SamplerChain(chain, seed, penalties, grammar)


def _grammar(vocab: ll.llama_vocab_p, text: str, triggers: tuple[str, ...]) -> ll.llama_sampler_p:
    """The grammar sampler; lazy when there are triggers: llama.cpp (src/llama-grammar.cpp)
    lets tokens through unconstrained and collects their text until a trigger regex matches
    it, then feeds the grammar the text from the match's start (its first non-empty group's,
    if it has groups) and constrains every token after."""
    if not triggers:
        grammar = ll.llama_sampler_init_grammar(vocab, text.encode(), b"root")
    else:
        check_trigger_patterns(triggers)
        patterns = (ctypes.c_char_p * len(triggers))(*(t.encode() for t in triggers))
        no_tokens = (ll.llama_token * 1)()
        grammar = ll.llama_sampler_init_grammar_lazy_patterns(
            vocab, text.encode(), b"root", patterns, len(triggers), no_tokens, 0
        )
    if not grammar:
        raise InvalidRequestError("the grammar does not parse (GBNF with a `root` rule)")
    return grammar


def allows(chain: SamplerChain, token: int) -> bool:
    """Whether the chain's grammar (if any) lets `token` come next: a token forced past the
    sampling must still fit it, since accepting one that does not throws inside llama.cpp
    (llama_grammar_accept_token), which ends the process. A lazy grammar still waiting for
    its trigger allows everything."""
    if chain.grammar is None:
        return True
    data = ll.llama_token_data(id=token, logit=1.0, p=0.0)
    candidates = ll.llama_token_data_array(
        data=ctypes.pointer(data), size=1, selected=-1, sorted=False
    )
    ll.llama_sampler_apply(chain.grammar, ctypes.byref(candidates))
    return bool(math.isfinite(data.logit))


def accept(chain: SamplerChain, token: int) -> None:
    """Advance the chain's state (grammar, penalties) by a token it did not sample."""
    if chain.grammar is not None:
        ll.llama_sampler_accept(chain.grammar, token)
    ll.llama_sampler_accept(chain.handle, token)


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def sample(chain: SamplerChain, ctx: ll.llama_context_p, index: int, n_vocab: int) -> int:
    """The next token of output `index`, accepted by the chain. Without a grammar, llama.cpp
    samples and accepts it. With one, the chain picks from the raw logits first and the pick
    is kept when the grammar allows it; only when it does not is the grammar run over every
    candidate and the chain asked again (llama.cpp's common_sampler_sample does the same: a
    grammar over 49k-262k candidates costs more than the decode of a small model, and most
    picks of a model under a grammar fit it). Greedy picks are the same either way."""
    if chain.grammar is None:
        return int(ll.llama_sampler_sample(chain.handle, ctx, index))
    logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, index), shape=(n_vocab,))
    if chain.penalties is None:
        # llama.cpp's own path (candidates built in C): it accepts the pick into the chain,
        # whose samplers keep nothing from accepted tokens when there are no penalties.
        token = int(ll.llama_sampler_sample(chain.handle, ctx, index))
    else:
        token = _pick(chain, logits, with_grammar=False)
    if allows(chain, token):
        ll.llama_sampler_accept(chain.grammar, token)
        if chain.penalties is not None:
            ll.llama_sampler_accept(chain.handle, token)
        return token
    if chain.seed is None:
        token = _greedy_allowed(chain, logits)
    else:
        token = _pick(chain, logits, with_grammar=True)
    accept(chain, token)
    return token


# How many of the best candidates a greedy chain tries against the grammar before all of them.
FIRST_CANDIDATES = 64


def _greedy_allowed(chain: SamplerChain, logits: np.ndarray) -> int:
    """Greedy under a grammar: the highest (biased, penalised) logit the grammar allows, the
    lowest id among equals, as the grammar over every candidate and then greedy give. The
    grammar sees the best FIRST_CANDIDATES (and any equal to the last of them) first, and the
    rest only when none of those fits. Measured on two cores, one pass of a JSON grammar over
    every candidate: 6.9 ms for SmolLM2's 49,152, 26.5 ms for Gemma 3's 262,144 (a decode
    step of either is ~17-25 ms), 0.03 ms over 64; a forced call pays it at every token the
    chain's own pick does not fit."""
    assert chain.grammar is not None
    candidates, array = _candidates(logits)
    ll.llama_sampler_apply(chain.handle, ctypes.byref(array))  # bias and penalties, in place
    scores = candidates["logit"]
    if len(scores) > FIRST_CANDIDATES:
        threshold = np.partition(scores, -FIRST_CANDIDATES)[-FIRST_CANDIDATES]
        best = candidates[scores >= threshold]  # ascending ids
        subset = ll.llama_token_data_array(
            data=best.ctypes.data_as(ll.llama_token_data_p),
            size=len(best),
            selected=-1,
            sorted=False,
        )
        ll.llama_sampler_apply(chain.grammar, ctypes.byref(subset))
        if np.isfinite(best["logit"]).any():
            return int(best["id"][np.argmax(best["logit"])])
    ll.llama_sampler_apply(chain.grammar, ctypes.byref(array))
    if not np.isfinite(scores).any():
        raise InvalidRequestError("the grammar allows no token here")
    return int(candidates["id"][np.argmax(scores)])


def _candidates(logits: np.ndarray) -> tuple[np.ndarray, ll.llama_token_data_array]:
    """Every token with its logit, in id order, and llama.cpp's view of them."""
    candidates = np.empty(len(logits), dtype=_TOKEN_DATA)
    candidates["id"] = np.arange(len(logits), dtype=np.int32)
    candidates["logit"] = logits
    candidates["p"] = 0.0
    array = ll.llama_token_data_array(
        data=candidates.ctypes.data_as(ll.llama_token_data_p),
        size=len(candidates),
        selected=-1,
        sorted=False,
    )
    return candidates, array


def _pick(chain: SamplerChain, logits: np.ndarray, *, with_grammar: bool) -> int:
    candidates, array = _candidates(logits)
    if with_grammar:
        assert chain.grammar is not None
        ll.llama_sampler_apply(chain.grammar, ctypes.byref(array))
    ll.llama_sampler_apply(chain.handle, ctypes.byref(array))
    if not 0 <= array.selected < array.size:
        raise InvalidRequestError("the grammar allows no token here")
    return int(candidates["id"][array.selected])


# Samplers with a graph implementation in llama.cpp's backend sampling (names as
# llama_sampler_name reports them). Penalties, grammar, typical and logit bias keep the chain
# on the CPU: a chain runs in the graph only when every one of its samplers can.
_IN_GRAPH = frozenset({"greedy", "top-k", "top-p", "min-p", "?temp", "temp", "dist"})


def runs_in_graph(chain: SamplerChain) -> bool:
    return all(name in _IN_GRAPH for name in chain_names(chain))


def accept_prompt(chain: SamplerChain, tokens: tuple[int, ...] | list[int]) -> None:
    """Let the penalties see the prompt (Hugging Face penalises prompt tokens too)."""
    if chain.penalties is not None:
        for token in tokens:
            ll.llama_sampler_accept(chain.penalties, token)


def chain_names(chain: SamplerChain) -> list[str]:
    """Names of the samplers in the chain, in order (llama.cpp's own names); the grammar,
    which runs before the chain when it runs, first."""
    count = ll.llama_sampler_chain_n(chain.handle)
    names = [] if chain.grammar is None else [ll.llama_sampler_name(chain.grammar).decode()]
    for i in range(count):
        sampler = ll.llama_sampler_chain_get(chain.handle, i)
        names.append(ll.llama_sampler_name(sampler).decode())
    return names


def free_chain(chain: SamplerChain) -> None:
    if chain.grammar is not None:
        ll.llama_sampler_free(chain.grammar)
    ll.llama_sampler_free(chain.handle)
