"""Speculative decoding in the batch decoder, against the real default model.

The references are the model itself: its greedy path without speculation, and a
teacher-forced re-score of prompt + output in a separate llama.cpp context (as
tests/worker/test_batching_e2e.py does). llama.cpp's kernels are not batch-invariant, so a
verification batch and a one-token decode can disagree where the two best logits are within a
rounding of each other; outputs are compared up to the reference's first such near-tie, and
every token is checked to be the argmax of the re-score within MAX_GAP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp as ll
import numpy as np
import pytest

from llorch.worker.backend.batch import LlamaBatchDecoder
from llorch.worker.backend.drafters import NgramDrafter, NgramIndex
from llorch.worker.backend.errors import ModelLoadError
from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import (
    FinishEvent,
    GenerationRequest,
    LoadOptions,
    SamplingParams,
    SequenceFailed,
    SpecOptions,
    StopReason,
    TokenEvent,
)

GREEDY = SamplingParams(temperature=0.0)
MAX_GAP = 0.5
CODE = """def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax


def average_price(items):
    if not items:
        return 0
    return sum(item.price for item in items) / len(items)
"""
# Input-grounded: the answer copies most of the prompt, which prompt lookup can draft.
REWRITE = (
    "Rewrite the following Python code, renaming the variable `subtotal` to `net`.\n\n"
    f"```python\n{CODE}```\n\nRewritten code:\n\n```python\n"
)


class Scorer:
    """Teacher-forced logits of prompt + output from a context of its own."""

    def __init__(self, path: Path) -> None:
        self.model = ll.llama_model_load_from_file(
            str(path).encode(), ll.llama_model_default_params()
        )
        params = ll.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = 512
        params.n_threads = params.n_threads_batch = 2
        self.ctx = ll.llama_init_from_model(self.model, params)
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))

    def rows(self, prompt: list[int], output: list[int]) -> np.ndarray:
        """Row j: the logits that predict output[j]."""
        tokens = prompt + output
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        batch = ll.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i >= len(prompt) - 1
            batch.n_tokens = len(tokens)
            assert ll.llama_decode(self.ctx, batch) == 0
            return np.stack(
                [
                    np.ctypeslib.as_array(
                        ll.llama_get_logits_ith(self.ctx, len(prompt) - 1 + j),
                        shape=(self.n_vocab,),
                    ).copy()
                    for j in range(len(output))
                ]
            )
        finally:
            ll.llama_batch_free(batch)

    def gaps(self, prompt: list[int], output: list[int]) -> list[float]:
        rows = self.rows(prompt, output)
        return [float(r.max() - r[t]) for r, t in zip(rows, output, strict=True)]

    def first_near_tie(self, prompt: list[int], output: list[int]) -> int:
        """The first output position whose two best logits are within MAX_GAP (where batch
        shapes may decide), or len(output)."""
        for j, row in enumerate(self.rows(prompt, output)):
            top2 = np.partition(row, -2)[-2:]
            if top2[1] - top2[0] < MAX_GAP:
                return j
        return len(output)

    def ranks(self, prompt: list[int], output: list[int]) -> list[int]:
        rows = self.rows(prompt, output)
        return [int((r > r[t]).sum()) for r, t in zip(rows, output, strict=True)]

    def close(self) -> None:
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)


@pytest.fixture(scope="module")
def scorer(model_path: Path) -> Iterator[Scorer]:
    instance = Scorer(model_path)
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def spec_backend(model_path: Path) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend()
    backend.load(model_path, LoadOptions(ctx_size=512, parallel=3, threads=2))
    yield backend
    backend.close()


def check_cache(decoder: LlamaBatchDecoder) -> None:
    """What each slot says it holds is what llama.cpp's KV cache holds: the rejected draft
    cells are gone, so a later prompt never reuses them."""
    memory = ll.llama_get_memory(decoder._ctx)
    for slot in decoder._slots:
        assert ll.llama_memory_seq_pos_max(memory, slot.seq_id) == len(slot.cached) - 1


def drive(
    decoder: LlamaBatchDecoder, requests: dict[str, GenerationRequest]
) -> dict[str, tuple[list[int], str, FinishEvent]]:
    """Decode the requests together; (token ids, text, finish) per key."""
    for key, request in requests.items():
        decoder.add(key, request)
    ids: dict[str, list[int]] = {k: [] for k in requests}
    texts = dict.fromkeys(requests, "")
    ends: dict[str, FinishEvent] = {}
    for _ in range(2000):
        for owner, event in decoder.step():
            assert isinstance(owner, str) and not isinstance(event, SequenceFailed), event
            if isinstance(event, TokenEvent):
                ids[owner].append(event.token_id)
                texts[owner] += event.text
            elif isinstance(event, FinishEvent):
                ends[owner] = event
        check_cache(decoder)
        if len(ends) == len(requests):
            return {k: (ids[k], texts[k], ends[k]) for k in requests}
    raise AssertionError(f"not finished: {sorted(ends)}")


def one(backend: LlamaCppBackend, request: GenerationRequest) -> tuple[list[int], str, FinishEvent]:
    return drive(backend.decoder(), {"only": request})["only"]


def rewrite(backend: LlamaCppBackend, max_tokens: int = 96, **kw) -> GenerationRequest:
    return GenerationRequest(tuple(backend.tokenize(REWRITE)), max_tokens, GREEDY, **kw)


# -- prompt lookup ---------------------------------------------------------------------------


def test_ngram_index_drafts_what_followed_the_last_earlier_occurrence():
    index = NgramIndex(ngram_max=3, ngram_min=2)
    index.extend([1, 2, 3, 4, 5, 9, 2, 3])
    assert index.draft(3) == [4, 5, 9]  # after the earlier "2 3"
    index.extend([7])
    assert index.draft(3) == []  # "3 7" and "7" never occurred before
    index.extend([0, 2, 3])
    assert index.draft(2) == [7, 0]  # the latest earlier "2 3" wins over the first one
    index.extend([1, 2, 3])
    assert index.draft(2) == [4, 5]  # the longer match "1 2 3" wins over "2 3"
    index.extend([8, 8, 8])
    assert index.draft(4) == [8]  # the suffix itself is never its own match


def test_ngram_drafter_follows_a_growing_sequence_and_starts_over_on_reset():
    drafter = NgramDrafter(ngram_max=2, ngram_min=2, draft_min=1)
    assert drafter.propose([(0, [5, 6, 7, 5, 6], 4)]) == [[7, 5, 6]]
    assert drafter.propose([(0, [5, 6, 7, 5, 6, 7, 5], 2)]) == [[6, 7]]
    drafter.reset(0)
    assert drafter.propose([(0, [1, 2, 1, 2], 2)]) == [[1, 2]]


def test_a_match_without_draft_min_tokens_after_it_drafts_nothing():
    index = NgramIndex(ngram_max=2, ngram_min=2, draft_min=3)
    index.extend([1, 2, 3, 4, 9, 1, 2])
    assert index.draft(8) == [3, 4, 9, 1, 2]
    index.extend([5, 6, 5, 6])
    assert index.draft(8) == []  # only "5 6" followed the earlier "5 6": shorter than 3
    assert index.draft(2) == [5, 6]  # unless the caller wants fewer (the end of max_tokens)


def test_greedy_under_prompt_lookup_is_the_greedy_path(spec_backend, scorer):
    prompt = list(spec_backend.tokenize(REWRITE))
    plain, _, plain_end = one(spec_backend, rewrite(spec_backend, speculative=False))
    ids, text, end = one(spec_backend, rewrite(spec_backend, speculative=True))
    assert plain_end.drafted == 0
    assert end.accepted > 0.5 * end.tokens_out  # the copy was drafted and taken
    assert 0 < end.accepted <= end.drafted
    assert end.tokens_out == len(ids) == 96 and end.stop_reason is StopReason.MAX_TOKENS
    tie = scorer.first_near_tie(prompt, plain)
    assert tie >= 48, "the reference has an early near-tie: pick another prompt"
    assert ids[:tie] == plain[:tie]
    assert max(scorer.gaps(prompt, ids)) <= MAX_GAP
    assert text == spec_backend.detokenize(ids)


def test_sampling_under_speculation_is_seeded_and_samples_from_the_model(spec_backend, scorer):
    top_k = 20
    sampling = SamplingParams(temperature=0.7, top_k=top_k, seed=1234)
    request = GenerationRequest(
        tuple(spec_backend.tokenize(REWRITE)), 64, sampling, speculative=True
    )
    first = one(spec_backend, request)
    second = one(spec_backend, request)
    assert first[0] == second[0] and first[2].seed == 1234
    assert first[2].accepted > 0
    # Every token was drawn from the target's top-k: it has non-zero probability there.
    ranks = scorer.ranks(list(request.prompt_tokens), first[0])
    assert max(ranks) < top_k, ranks


def test_a_stop_inside_accepted_drafts_ends_there(spec_backend, scorer):
    _, plain_text, _ = one(spec_backend, rewrite(spec_backend, 64, speculative=False))
    stop = "tax ="  # reached inside a draft that goes on past it
    assert stop in plain_text
    _, text, end = one(spec_backend, rewrite(spec_backend, 64, speculative=True, stop=(stop,)))
    assert end.stop_reason is StopReason.STOP_SEQUENCE
    assert 0 < end.accepted < end.drafted  # the draft after the stop was left untaken
    assert text == plain_text.split(stop)[0]
    # The draft's cells after the stop are gone (check_cache in drive), and the next request,
    # which extends the same text, reuses the slot's cache and decodes the greedy path.
    tokens = tuple(spec_backend.tokenize(REWRITE + text + stop))
    more, _, again = one(spec_backend, GenerationRequest(tokens, 16, GREEDY, speculative=True))
    assert again.prompt_cached > len(spec_backend.tokenize(REWRITE))
    assert max(scorer.gaps(list(tokens), more)) <= MAX_GAP


def test_a_mixed_batch_speculates_only_where_asked(spec_backend, scorer):
    decoder = spec_backend.decoder()
    base = rewrite(spec_backend, 48)
    other = tuple(spec_backend.tokenize("The three primary colors are"))
    results = drive(
        decoder,
        {
            "lookup": GenerationRequest(base.prompt_tokens, 48, GREEDY, speculative=True),
            "plain": GenerationRequest(other, 48, GREEDY, speculative=False),
            "logprobs": GenerationRequest(other, 24, GREEDY, speculative=True, logprobs=2),
        },
    )
    assert results["lookup"][2].accepted > 0
    assert results["plain"][2].drafted == 0
    assert results["logprobs"][2].drafted == 0  # scored token by token: never speculates
    for key, request_prompt in (("lookup", base.prompt_tokens), ("plain", other)):
        assert max(scorer.gaps(list(request_prompt), results[key][0])) <= MAX_GAP, key


def test_a_batch_without_room_is_retried_with_its_drafts(spec_backend, scorer):
    decoder = spec_backend.decoder()
    sizes: list[int] = []

    def refuse_big(ctx: ll.llama_context_p, batch: ll.llama_batch) -> int:
        if batch.n_tokens > 3:  # prompts, and a token with more than two drafts
            return 1
        sizes.append(batch.n_tokens)
        return int(ll.llama_decode(ctx, batch))

    decoder._decode = refuse_big
    try:
        request = rewrite(spec_backend, 32, speculative=True)
        ids, _, end = one(spec_backend, request)
    finally:
        decoder._decode = ll.llama_decode
    assert max(sizes) <= 3 and end.tokens_out == 32 and end.accepted > 0
    assert max(scorer.gaps(list(request.prompt_tokens), ids)) <= MAX_GAP


# -- a draft model ---------------------------------------------------------------------------


def test_a_draft_model_equal_to_the_model_has_every_draft_accepted(model_path, scorer):
    backend = LlamaCppBackend()
    spec = SpecOptions(default=True, draft_model=model_path, draft_max=4)
    backend.load(model_path, LoadOptions(ctx_size=512, parallel=2, threads=2, speculative=spec))
    try:
        prompt = list(backend.tokenize(REWRITE))
        ids, _, end = one(backend, rewrite(backend, 40))
        plain, _, _ = one(backend, rewrite(backend, 40, speculative=False))
    finally:
        backend.close()
    tie = scorer.first_near_tie(prompt, plain)
    assert tie == len(plain), "a near-tie in the reference would let the two contexts differ"
    assert ids == plain
    assert end.drafted > 0 and end.accepted == end.drafted


def test_a_draft_model_with_another_vocabulary_is_refused(model_path, tmp_path):
    from tiny_hf import tiny_llama

    from llorch.convert.api import convert

    draft = tmp_path / "tiny.gguf"
    convert(tiny_llama(tmp_path / "tiny"), draft, outtype="f32")
    backend = LlamaCppBackend()
    spec = SpecOptions(default=True, draft_model=draft)
    with pytest.raises(ModelLoadError, match="does not share the model's vocabulary"):
        backend.load(model_path, LoadOptions(ctx_size=256, threads=2, speculative=spec))
