"""SamplingParams -> llama.cpp's native sampler chain.

The order follows llama.cpp's own common sampler (penalties, top-k, top-p, min-p, temperature,
then the final pick), so the same parameters select the same tokens as llama-cli / llama-server.
A sampler is added only when its parameter changes anything: a disabled sampler still walks
the whole vocabulary (262k entries for Gemma 3) on every token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import llama_cpp as ll

from worker.backend.protocol import SamplingParams

# llama.h: LLAMA_DEFAULT_SEED asks the dist sampler for a random seed; never pass it on purpose.
_LLAMA_DEFAULT_SEED = 0xFFFFFFFF


@dataclass(frozen=True)
class SamplerChain:
    handle: ll.llama_sampler_p
    seed: int | None  # None for greedy chains, which draw nothing


def resolve_seed(params: SamplingParams) -> int:
    if params.seed is not None:
        if not 0 <= params.seed < _LLAMA_DEFAULT_SEED:
            raise ValueError(f"seed {params.seed} outside 0..{_LLAMA_DEFAULT_SEED - 1}")
        return params.seed
    return random.randrange(_LLAMA_DEFAULT_SEED)


def build_chain(params: SamplingParams, n_vocab: int, penalty_window: int) -> SamplerChain:
    chain_params = ll.llama_sampler_chain_default_params()
    chain_params.no_perf = True
    chain = ll.llama_sampler_chain_init(chain_params)
    add = lambda sampler: ll.llama_sampler_chain_add(chain, sampler)  # noqa: E731

    if params.repetition_penalty != 1.0:
        # Whole-context window, as Hugging Face's repetition_penalty looks at every input id.
        add(
            ll.llama_sampler_init_penalties(
                n_vocab, penalty_window, params.repetition_penalty, 0.0, 0.0
            )
        )
    if params.greedy:
        add(ll.llama_sampler_init_greedy())
        return SamplerChain(chain, None)
    if params.top_k > 0:
        add(ll.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        add(ll.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(ll.llama_sampler_init_min_p(params.min_p, 1))
    add(ll.llama_sampler_init_temp(params.temperature))
    seed = resolve_seed(params)
    add(ll.llama_sampler_init_dist(seed))
    return SamplerChain(chain, seed)


def chain_names(chain: SamplerChain) -> list[str]:
    """Names of the samplers in the chain, in order (llama.cpp's own names)."""
    count = ll.llama_sampler_chain_n(chain.handle)
    names = []
    for i in range(count):
        sampler = ll.llama_sampler_chain_get(chain.handle, i)
        names.append(ll.llama_sampler_name(sampler).decode())
    return names


def free_chain(chain: SamplerChain) -> None:
    ll.llama_sampler_free(chain.handle)
