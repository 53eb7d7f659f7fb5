"""Prefix reuse through context checkpoints, on the real default model (Gemma 3: 5 of 6 layers
see a 512-token window, which keeps only the window and a batch of cells): a conversation's
third turn shares only the first prompt with what its slot holds, further back than the
window's cells reach; the slot goes back to the checkpoint taken 4 tokens before that prompt's
end, reuses at least 90 % of the shared prefix, and answers exactly as a fresh slot does."""

from __future__ import annotations

import pytest
from support import THREADS

from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import (
    FinishEvent,
    GenerationRequest,
    LoadOptions,
    SamplingParams,
    TokenEvent,
)
from llorch.worker.backend.single import generate

GREEDY = SamplingParams(temperature=0.0)
# A small batch keeps the window's cache small (512 + 64 cells, rounded up to 768), so a few
# hundred tokens after the first prompt push it out of the window's cells.
OPTIONS = LoadOptions(ctx_size=1024, parallel=1, threads=THREADS, batch_size=64)
FIRST = " ".join(f"Room {i} has {i % 7} chairs and {i % 5} tables." for i in range(12))
SECOND = " ".join(f"Shelf {i} holds {i * 3 % 11} books." for i in range(75))
THIRD = " Which room has the most chairs?"


def run(backend: LlamaCppBackend, prompt: list[int], n: int = 12) -> tuple[list[int], FinishEvent]:
    events = list(generate(backend.decoder(), GenerationRequest(tuple(prompt), n, GREEDY)))
    end = events[-1]
    assert isinstance(end, FinishEvent)
    return [e.token_id for e in events if isinstance(e, TokenEvent)], end


def conversation(backend: LlamaCppBackend) -> tuple[list[int], list[int], FinishEvent]:
    """Turn 1, turn 2 extending it, then a turn sharing only turn 1's prompt: that prompt,
    and the third turn's answer and end."""
    first = backend.tokenize(FIRST)
    answer, _ = run(backend, first, 4)
    second = first + answer + backend.tokenize(SECOND, add_special=False)
    # The window's cells (768) no longer reach back to the first prompt's end.
    assert len(second) > 768 + 8
    _, end = run(backend, second, 1)
    assert end.prompt_cached == len(first) + len(answer) - 1  # a plain extension
    got, end = run(backend, first + backend.tokenize(THIRD, add_special=False))
    return first, got, end


@pytest.mark.slow
def test_a_turn_after_a_cut_restores_the_checkpoint(model_path):
    backend = LlamaCppBackend()
    backend.load(model_path, OPTIONS)
    fresh = LlamaCppBackend()
    fresh.load(model_path, OPTIONS)
    try:
        first, got, end = conversation(backend)
        checkpoints = backend.decoder()._checkpoints
        assert checkpoints is not None and checkpoints.restored == 1
        assert end.prompt_cached == len(first) - 4  # the checkpoint 4 tokens before the end
        assert end.prompt_cached >= 0.9 * len(first)
        expected, cold = run(fresh, first + fresh.tokenize(THIRD, add_special=False))
        assert cold.prompt_cached == 0
        assert got == expected
    finally:
        backend.close()
        fresh.close()


@pytest.mark.slow
def test_a_converted_gemma_4_restores_its_checkpoint(tmp_path):
    """The same on Gemma 4 (sliding layers beside full-attention layers with their own head
    size), a tiny random checkpoint converted by llorch: its 8-token window keeps 8 + a batch
    of cells (rounded up to 256); a second turn of 300 more tokens pushes the first prompt's
    end out of them, and a third turn sharing only that prompt goes back to the checkpoint."""
    from llorch.convert import convert
    from tests.convert import parity_cases
    from tests.convert.conftest import build_checkpoint, sample_tokens

    case = parity_cases.CASES["gemma4-26b-a4b-moe"]
    built = build_checkpoint(
        tmp_path / "hf", case.model_cls, case.config_cls, case.config, tokenizer=case.tokenizer
    )
    path = tmp_path / "gemma4.gguf"
    convert(built.folder, path, outtype="f32", verify=False)
    first = sample_tokens(built.n_vocab, n=200, seed=3)
    options = LoadOptions(ctx_size=1024, parallel=1, threads=THREADS, batch_size=64)
    backend, fresh = LlamaCppBackend(), LlamaCppBackend()
    backend.load(path, options)
    fresh.load(path, options)
    try:
        answer, _ = run(backend, first, 4)
        second = first + answer + sample_tokens(built.n_vocab, n=300, seed=4)
        _, end = run(backend, second, 1)
        assert end.prompt_cached == len(first) + len(answer) - 1  # a plain extension
        third = first + sample_tokens(built.n_vocab, n=5, seed=5)
        got, end = run(backend, third)
        checkpoints = backend.decoder()._checkpoints
        assert checkpoints is not None and checkpoints.restored == 1
        assert end.prompt_cached == len(first) - 4  # the checkpoint 4 tokens before the end
        expected, cold = run(fresh, third)
        assert cold.prompt_cached == 0
        assert got == expected
    finally:
        backend.close()
        fresh.close()
