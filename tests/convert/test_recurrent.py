"""Recurrent (state-space) rows through several decode steps: llama.cpp reads a prompt, then
decodes one token at a time from the state it carried over; every step's logits are compared
with transformers' for the whole sequence at once. (test_parity.py checks the prompt pass.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import THREADS

from llorch.convert import convert, llamacpp
from tests.convert import parity_cases

# mamba2-130m as its parity case (expand 2, head_dim 16, state 16, conv 4, one group, tied);
# Mamba-Codestral-7B's 8 groups of 128 heads as 2 of 8 here, untied
MAMBA2 = parity_cases.CASES["mamba2"].config
CASES = {
    "mamba2-130m": ("Mamba2ForCausalLM", "Mamba2Config", MAMBA2),
    "mamba2-codestral-groups": (
        "Mamba2ForCausalLM",
        "Mamba2Config",
        {**MAMBA2, "n_groups": 2, "tie_word_embeddings": False},
    ),
    # hybrids, configured as their parity cases (test_parity.py): Falcon-H1 (the KV cache and
    # the mixer's state advance together), Qwen3.5 (Gated DeltaNet states and a KV cache)
    **{
        case_id: (case.model_cls, case.config_cls, case.config)
        for case_id, case in parity_cases.CASES.items()
        if case_id.startswith(("falcon-h1", "qwen35-hybrid", "qwen35-moe-hybrid"))
    },
}
N_PROMPT = 16  # then 8 single-token steps
# the worker's slot reuse and speculation, on a recurrent and on a hybrid (KV cache + states)
STATEFUL = ["mamba2-130m", "qwen35-hybrid"]


def stepwise_logits(path: Path, tokens: list[int], n_prompt: int) -> np.ndarray:
    """Logits at every position: the prompt in one batch, then one token per decode call."""
    lib = llamacpp._lib()
    with llamacpp.load_model(path) as model:
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = max(len(tokens), 8)
        cparams.n_threads = cparams.n_threads_batch = THREADS
        cparams.type_k = cparams.type_v = lib.GGML_TYPE_F32
        # hybrids attend too: CPU flash attention rounds Q to F16 (as llamacpp.logits avoids)
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = lib.llama_init_from_model(model, cparams)
        n_vocab = llamacpp.vocab(model).n_tokens
        batch = lib.llama_batch_init(len(tokens), 0, 1)
        rows: list[np.ndarray] = []
        try:
            chunks = [tokens[:n_prompt]] + [[t] for t in tokens[n_prompt:]]
            pos = 0
            for chunk in chunks:
                for i, tok in enumerate(chunk):
                    batch.token[i], batch.pos[i] = tok, pos + i
                    batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = 1, 0, 1
                batch.n_tokens = len(chunk)
                assert lib.llama_decode(ctx, batch) == 0
                for i in range(len(chunk)):
                    ptr = lib.llama_get_logits_ith(ctx, i)
                    rows.append(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy())
                pos += len(chunk)
            return np.stack(rows)
        finally:
            lib.llama_batch_free(batch)
            lib.llama_free(ctx)


@pytest.mark.slow
@pytest.mark.parametrize("case_id", list(CASES))
def test_decode_steps_carry_the_state(
    case_id: str, checkpoint: Any, helpers: Any, tmp_path: Path
) -> None:
    model_cls, config_cls, config = CASES[case_id]
    built = checkpoint(model_cls, config_cls, config, tokenizer="gpt2")
    out = tmp_path / "o.gguf"
    report = convert(built.folder, out, outtype="f32")
    tokens = helpers.sample_tokens(built.n_vocab)
    ref = helpers.reference_logits(built.folder, tokens)
    got = stepwise_logits(out, tokens, N_PROMPT)
    cos = helpers.cosines(got, ref)
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    print(
        f"STEPS {case_id}: cos_min={cos.min():.7f} (decode steps {cos[N_PROMPT:].min():.7f}) "
        f"rel={rel:.3g} convert={report.seconds:.2f}s"
    )
    assert cos.min() >= 0.9999 and rel <= 1e-3
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()


def _until_done(decoder: Any, key: str) -> tuple[list[int], Any]:
    """Steps the decoder until the request `key` ends (other requests go on beside it): its
    tokens and its last event."""
    from llorch.worker.backend.protocol import TokenEvent

    tokens: list[int] = []
    for _ in range(400):
        for got_key, event in decoder.step():
            if got_key != key:
                continue
            if not isinstance(event, TokenEvent):
                return tokens, event
            tokens.append(event.token_id)
    raise AssertionError("not finished")


def _generate(
    decoder: Any, key: str, prompt: list[int], speculative: bool = False
) -> tuple[list[int], Any]:
    from llorch.worker.backend.protocol import GenerationRequest, SamplingParams

    greedy = SamplingParams(temperature=0.0)
    decoder.add(key, GenerationRequest(tuple(prompt), 8, greedy, speculative=speculative))
    return _until_done(decoder, key)


def _alone(path: Path, prompt: list[int], ctx_size: int) -> list[int]:
    """The greedy tokens of `prompt` on a fresh one-slot decoder."""
    from llorch.worker.backend.llama import LlamaCppBackend
    from llorch.worker.backend.protocol import LoadOptions

    backend = LlamaCppBackend()
    backend.load(path, LoadOptions(ctx_size=ctx_size, parallel=1, threads=THREADS))
    try:
        return _generate(backend.decoder(), "x", prompt)[0]
    finally:
        backend.close()


@pytest.mark.slow
@pytest.mark.parametrize("case_id", STATEFUL)
def test_slot_reuse_never_corrupts_the_state(
    case_id: str, checkpoint: Any, helpers: Any, tmp_path: Path
) -> None:
    """The worker's decoder reuses a slot's cache for a prompt that shares a prefix with it by
    removing the tail; a recurrent state cannot lose a tail (llama.cpp refuses), so the slot
    is cleared and read again; a prompt that extends the cached tokens continues the state.
    Either way each request gets the greedy tokens it gets alone."""
    from llorch.worker.backend.llama import LlamaCppBackend
    from llorch.worker.backend.protocol import LoadOptions

    model_cls, config_cls, config = CASES[case_id]
    built = checkpoint(model_cls, config_cls, config, tokenizer="gpt2")
    out = tmp_path / "o.gguf"
    convert(built.folder, out, outtype="f32")
    a = helpers.sample_tokens(built.n_vocab, n=12, seed=3)
    shared = a[:6] + helpers.sample_tokens(built.n_vocab, n=6, seed=4)

    backend = LlamaCppBackend()
    backend.load(out, LoadOptions(ctx_size=64, parallel=1, threads=THREADS))
    try:
        decoder = backend.decoder()
        first, _ = _generate(decoder, "a", a)
        extended = a + first + helpers.sample_tokens(built.n_vocab, n=3, seed=5)
        runs = {"same prompt": a, "shared prefix": shared, "extension": extended}
        for name, prompt in runs.items():
            if name == "extension":  # the cache holds a and its output: the state continues
                _generate(decoder, "again", a)
            got, end = _generate(decoder, name, prompt)
            assert got == _alone(out, prompt, 64), name
            if name == "shared prefix":
                assert end.prompt_cached == 0  # cleared: the state cannot drop a tail
            if name == "extension":
                assert end.prompt_cached > len(a)
    finally:
        backend.close()


class WrongDrafter:
    """Drafts tokens the model never takes first (the reference's 2nd choice would do; any
    fixed token works on random weights): every verification rejects the draft, and its
    cells must leave the state."""

    adaptive = False

    def __init__(self, token: int) -> None:
        self.token = token

    def reset(self, seq_id: int) -> None:
        pass

    def propose(self, wants: list[tuple[int, list[int], int]]) -> list[list[int]]:
        return [[self.token] * min(room, 3) for _seq, _tokens, room in wants]

    def close(self) -> None:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("case_id", STATEFUL)
def test_drafts_never_enter_a_recurrent_state(
    case_id: str, checkpoint: Any, helpers: Any, tmp_path: Path
) -> None:
    """Speculative decoding removes a rejected draft's cells, which a recurrent state cannot
    drop: asked to speculate (with drafts that are always wrong), the decoder gives what
    greedy decoding gives without speculation."""
    from llorch.worker.backend.llama import LlamaCppBackend
    from llorch.worker.backend.protocol import LoadOptions

    model_cls, config_cls, config = CASES[case_id]
    built = checkpoint(model_cls, config_cls, config, tokenizer="gpt2")
    out = tmp_path / "o.gguf"
    convert(built.folder, out, outtype="f32")
    prompt = helpers.sample_tokens(built.n_vocab, n=12, seed=3)
    runs: dict[bool, tuple[list[int], Any]] = {}
    for speculative in (False, True):
        backend = LlamaCppBackend()
        backend.load(out, LoadOptions(ctx_size=64, parallel=1, threads=THREADS))
        try:
            decoder = backend.decoder()
            if speculative:
                wrong = next(t for t in range(3, built.n_vocab) if t not in runs[False][0])
                decoder._speculation._drafter = WrongDrafter(wrong)  # type: ignore[attr-defined]
            runs[speculative] = _generate(decoder, "x", prompt, speculative)
        finally:
            backend.close()
    got, end = runs[True]
    assert got == runs[False][0]
    assert end.drafted == 0  # recurrent models do not speculate


@pytest.mark.slow
@pytest.mark.parametrize("case_id", STATEFUL)
def test_the_host_ram_cache_restores_a_recurrent_state_whole(
    case_id: str, checkpoint: Any, helpers: Any, tmp_path: Path
) -> None:
    """A conversation's next turn lands on the other slot while the first is busy: the
    host-RAM prompt cache copies the first turn's whole state in (recurrent and attention
    parts), and the turn goes on from it as if it had read everything; a prompt that shares
    only part of a cached state is read anew. Each gets the greedy tokens it gets alone."""
    from llorch.worker.backend.llama import LlamaCppBackend
    from llorch.worker.backend.protocol import (
        FinishEvent,
        GenerationRequest,
        LoadOptions,
        SamplingParams,
    )

    model_cls, config_cls, config = CASES[case_id]
    built = checkpoint(model_cls, config_cls, config, tokenizer="gpt2")
    out = tmp_path / "o.gguf"
    convert(built.folder, out, outtype="f32")
    greedy = SamplingParams(temperature=0.0)
    options = LoadOptions(ctx_size=160, parallel=2, threads=THREADS, cache_bytes=64 << 20)
    a = helpers.sample_tokens(built.n_vocab, n=70, seed=3)  # the cache keeps >= 64 tokens

    backend = LlamaCppBackend()
    backend.load(out, options)
    try:
        decoder = backend.decoder()
        first, _ = _generate(decoder, "turn 1", a)
        # A request sharing a third of turn 1 takes its slot: keeping less than half of it,
        # the slot's state goes to the host-RAM cache first (as llama-server's f_keep < 0.5).
        busy = a[: len(a) // 3] + helpers.sample_tokens(built.n_vocab, n=20, seed=7)
        decoder.add("busy", GenerationRequest(tuple(busy), 60, greedy))
        decoder.step()
        turn2 = a + first + helpers.sample_tokens(built.n_vocab, n=3, seed=5)
        decoder.add("turn 2", GenerationRequest(tuple(turn2), 8, greedy))
        got, end = _until_done(decoder, "turn 2")
        assert isinstance(end, FinishEvent), end
        assert end.prompt_cached >= len(a)  # restored from host RAM, not read again
        assert got == _alone(out, turn2, 160)
        partial = a[:40] + helpers.sample_tokens(built.n_vocab, n=30, seed=6)
        decoder.add("partial", GenerationRequest(tuple(partial), 8, greedy))
        got, end = _until_done(decoder, "partial")
        assert isinstance(end, FinishEvent), end
        assert end.prompt_cached == 0  # a recurrent state cannot be cut back to 40 tokens
        assert got == _alone(out, partial, 160)
    finally:
        backend.close()
