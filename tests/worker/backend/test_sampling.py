"""Each sampling parameter reaches llama.cpp's native sampler chain.

Names are llama.cpp's own (llama_sampler_name); its temperature sampler calls itself "?temp".
"""

from __future__ import annotations

import pytest

from llorch.worker.backend import sampling
from llorch.worker.backend.protocol import SamplingParams


def names(params: SamplingParams) -> list[str]:
    chain = sampling.build_chain(params, n_vocab=1000, penalty_window=64)
    try:
        return sampling.chain_names(chain)
    finally:
        sampling.free_chain(chain)


def test_defaults_draw_from_the_untouched_distribution():
    assert names(SamplingParams()) == ["?temp", "dist"]


def test_temperature_zero_is_greedy():
    assert names(SamplingParams(temperature=0.0)) == ["greedy"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (SamplingParams(top_k=40), ["top-k", "?temp", "dist"]),
        (SamplingParams(top_p=0.9), ["top-p", "?temp", "dist"]),
        (SamplingParams(min_p=0.05), ["min-p", "?temp", "dist"]),
        (SamplingParams(repetition_penalty=1.3), ["penalties", "?temp", "dist"]),
        (SamplingParams(temperature=0.0, repetition_penalty=1.3), ["penalties", "greedy"]),
        (
            SamplingParams(top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1),
            ["penalties", "top-k", "top-p", "min-p", "?temp", "dist"],
        ),
    ],
)
def test_each_parameter_adds_its_sampler_in_llama_cpp_order(params, expected):
    assert names(params) == expected


def test_seed_is_passed_to_the_dist_sampler():
    chain = sampling.build_chain(SamplingParams(seed=1234), n_vocab=1000, penalty_window=64)
    try:
        assert chain.seed == 1234
        import llama_cpp as ll

        assert ll.llama_sampler_get_seed(chain.handle) == 1234
    finally:
        sampling.free_chain(chain)


def test_without_a_seed_each_chain_draws_a_fresh_one():
    seeds = set()
    for _ in range(5):
        chain = sampling.build_chain(SamplingParams(), n_vocab=1000, penalty_window=64)
        seeds.add(chain.seed)
        sampling.free_chain(chain)
    assert len(seeds) > 1
