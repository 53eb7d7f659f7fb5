"""Prefix reuse through context checkpoints on recurrent and hybrid models, built tiny from
random transformers checkpoints and converted: Mamba-2 (one recurrent state per sequence),
Qwen 3.5 (Gated DeltaNet states beside a KV cache) and Falcon-H1 (Mamba-2 mixers beside
attention). A slot holds a prompt and its answer; the next request shares only the prompt.
A recurrent state cannot be cut back to it, so the slot restores the checkpoint taken 4
tokens before the prompt's end: at least 90 % of the shared prefix is reused (none before
checkpoints), and the answer is the one a fresh slot gives."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from support import THREADS

from llorch.convert import convert
from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import (
    FinishEvent,
    GenerationRequest,
    LoadOptions,
    SamplingParams,
    TokenEvent,
)
from llorch.worker.backend.single import generate
from tests.convert import parity_cases
from tests.convert.conftest import build_checkpoint, sample_tokens

CASES = ["mamba2", "qwen35-hybrid", "falcon-h1-0.5b"]
OPTIONS = LoadOptions(ctx_size=256, parallel=1, threads=THREADS)
GREEDY = SamplingParams(temperature=0.0)


def run(backend: LlamaCppBackend, prompt: list[int]) -> tuple[list[int], FinishEvent]:
    events = list(generate(backend.decoder(), GenerationRequest(tuple(prompt), 8, GREEDY)))
    end = events[-1]
    assert isinstance(end, FinishEvent)
    return [e.token_id for e in events if isinstance(e, TokenEvent)], end


Model = tuple[Path, list[int], list[int]]  # the GGUF, a prompt, a turn sharing only it


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Model]:
    """A case's model, built and converted once for the module."""

    @cache
    def made(case_id: str) -> Model:
        case = parity_cases.CASES[case_id]
        folder = tmp_path_factory.mktemp(case_id)
        built = build_checkpoint(
            folder / "hf", case.model_cls, case.config_cls, case.config, tokenizer="gpt2"
        )
        convert(built.folder, folder / "m.gguf", outtype="f32")
        prompt = sample_tokens(built.n_vocab, n=80, seed=3)
        return folder / "m.gguf", prompt, prompt + sample_tokens(built.n_vocab, n=5, seed=4)

    return made


@pytest.mark.slow
@pytest.mark.parametrize("case_id", CASES)
def test_a_turn_after_a_cut_restores_the_checkpoint(
    case_id: str, model: Callable[[str], Model]
) -> None:
    path, prompt, follow_up = model(case_id)
    backend, fresh = LlamaCppBackend(), LlamaCppBackend()
    backend.load(path, OPTIONS)
    fresh.load(path, OPTIONS)
    try:
        run(backend, prompt)  # the slot holds the prompt and its answer
        got, end = run(backend, follow_up)  # shares only the prompt
        assert end.prompt_cached == len(prompt) - 4  # the checkpoint 4 tokens before the end
        assert end.prompt_cached >= 0.9 * len(prompt)
        expected, cold = run(fresh, follow_up)
        assert cold.prompt_cached == 0
        assert got == expected
    finally:
        backend.close()
        fresh.close()


@pytest.mark.slow
def test_the_host_ram_cache_keeps_the_checkpoints(model: Callable[[str], Model]) -> None:
    """The same turn on another slot: the first slot is busy, the host-RAM cache holds the
    first turn's state and its checkpoints, and the turn restores the one 4 tokens before the
    shared prompt's end there (Qwen 3.5 hybrid: recurrent states and a KV cache)."""
    path, prompt, follow_up = model("qwen35-hybrid")
    backend, fresh = LlamaCppBackend(), LlamaCppBackend()
    backend.load(path, LoadOptions(ctx_size=256, parallel=2, threads=THREADS, cache_bytes=64 << 20))
    fresh.load(path, OPTIONS)
    try:
        decoder = backend.decoder()
        run(backend, prompt)  # slot 0 holds it and its answer
        # A request sharing a third of it takes slot 0: keeping less than half, the slot's
        # state and checkpoints go to the host-RAM cache first.
        busy = prompt[: len(prompt) // 3] + follow_up[len(prompt) :]
        decoder.add("busy", GenerationRequest(tuple(busy), 40, GREEDY))
        decoder.step()
        decoder.add("turn", GenerationRequest(tuple(follow_up), 8, GREEDY))  # on slot 1
        got: list[int] = []
        end = None
        while end is None:
            for key, event in decoder.step():
                if key == "turn" and isinstance(event, TokenEvent):
                    got.append(event.token_id)
                elif key == "turn":
                    end = event
        assert isinstance(end, FinishEvent), end
        assert end.prompt_cached == len(prompt) - 4
        expected, _ = run(fresh, follow_up)
        assert got == expected
    finally:
        backend.close()
        fresh.close()
