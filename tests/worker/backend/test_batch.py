"""The batch decoder when llama_decode finds no room in the KV cache (status 1), on the real
default model: the step is retried with fewer tokens, and only a sequence that cannot fit
even alone ends, with an out-of-memory error. llama_decode is wrapped to answer 1 on the
batches a full cache would refuse; every other batch is decoded for real."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import llama_cpp as ll
import pytest
from support import FRANCE, THREADS

from llorch.worker.backend.errors import OutOfMemoryError
from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import (
    FinishEvent,
    GenerationRequest,
    LoadOptions,
    SamplingParams,
    SequenceFailed,
    StopReason,
    TokenEvent,
)
from llorch.worker.backend.single import generate

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = (FRANCE, "The opposite of hot is", "One, two, three,")


@pytest.fixture(scope="module")
def three_slots(model_path: Path) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend()
    backend.load(model_path, LoadOptions(ctx_size=256, parallel=3, threads=THREADS))
    yield backend
    backend.close()


class RefusingDecode:
    """llama_decode, except that it answers 1 (no KV slot) when `refuse(batch)` says so."""

    def __init__(self, refuse: Callable[[ll.llama_batch], bool]) -> None:
        self.refuse = refuse
        self.refused = 0
        self.sizes: list[int] = []

    def __call__(self, ctx: ll.llama_context_p, batch: ll.llama_batch) -> int:
        if self.refuse(batch):
            self.refused += 1
            return 1
        self.sizes.append(batch.n_tokens)
        return int(ll.llama_decode(ctx, batch))


def run_all(backend: LlamaCppBackend, decode: RefusingDecode, max_tokens: int = 8) -> dict:
    decoder = backend.decoder()
    decoder._decode = decode  # type: ignore[attr-defined]
    try:
        for prompt in PROMPTS:
            request = GenerationRequest(tuple(backend.tokenize(prompt)), max_tokens, GREEDY)
            decoder.add(prompt, request)
        texts = {p: "" for p in PROMPTS}
        ends: dict[str, FinishEvent | SequenceFailed] = {}
        for _ in range(500):
            for key, event in decoder.step():
                assert isinstance(key, str)
                if isinstance(event, TokenEvent):
                    texts[key] += event.text
                else:
                    ends[key] = event
            if len(ends) == len(PROMPTS):
                return {"texts": texts, "ends": ends}
        raise AssertionError(f"not finished: {ends}")
    finally:
        decoder._decode = ll.llama_decode  # type: ignore[attr-defined]


def test_a_batch_without_room_is_retried_smaller(three_slots):
    # The first run on these slots: the prompts are read whole (nothing cached yet), and
    # every batch of more than 2 tokens (prompt chunks, and all three generating) is refused.
    small = RefusingDecode(lambda batch: batch.n_tokens > 2)
    result = run_all(three_slots, small)
    assert small.refused > 0 and max(small.sizes) <= 2
    reference = run_all(three_slots, RefusingDecode(lambda batch: False))
    for prompt in PROMPTS:
        end = result["ends"][prompt]
        assert isinstance(end, FinishEvent) and end.stop_reason is StopReason.MAX_TOKENS
        assert end.tokens_out == 8
    assert result["texts"][FRANCE].startswith(" Paris")
    assert result["texts"] == reference["texts"]


def test_only_the_sequence_that_cannot_fit_fails(three_slots):
    decoder = three_slots.decoder()

    def holds_the_victim(batch: ll.llama_batch) -> bool:
        slot = decoder._by_key.get(PROMPTS[1])  # type: ignore[attr-defined]
        victim = slot.seq_id if slot is not None else -1
        return any(batch.seq_id[i][0] == victim for i in range(batch.n_tokens))

    refusing = RefusingDecode(holds_the_victim)
    result = run_all(three_slots, refusing)
    failed = result["ends"][PROMPTS[1]]
    assert isinstance(failed, SequenceFailed) and isinstance(failed.error, OutOfMemoryError)
    for prompt in (PROMPTS[0], PROMPTS[2]):
        end = result["ends"][prompt]
        assert isinstance(end, FinishEvent) and end.stop_reason is StopReason.MAX_TOKENS
    assert result["texts"][FRANCE].startswith(" Paris")
    assert decoder.free_slots() == 3


def test_one_prompt_is_read_once_for_several_sequences(three_slots):
    """Three sequences of one prompt (n > 1): the first reads it, the others copy its KV
    cache; with greedy sampling all three give the text the prompt gives alone."""
    decoder = three_slots.decoder()
    prompt = tuple(three_slots.tokenize("Count with me: one, two, three, four,"))
    counting = RefusingDecode(lambda batch: False)
    decoder._decode = counting  # type: ignore[attr-defined]
    try:
        for key in ("a", "b", "c"):
            decoder.add(key, GenerationRequest(prompt, 6, GREEDY))
        texts = {"a": "", "b": "", "c": ""}
        ends: dict[str, FinishEvent] = {}
        while len(ends) < 3:
            for key, event in decoder.step():
                if isinstance(event, TokenEvent):
                    texts[key] += event.text
                else:
                    assert isinstance(event, FinishEvent), event
                    ends[key] = event
    finally:
        decoder._decode = ll.llama_decode  # type: ignore[attr-defined]
    # One decode read the prompt; every later one holds a token of each sequence at most.
    assert counting.sizes[0] == len(prompt) - ends["a"].prompt_cached
    assert max(counting.sizes[1:]) <= 3
    assert ends["b"].prompt_cached == ends["c"].prompt_cached == len(prompt)
    alone = three_slots.decoder()
    reference = "".join(
        e.text
        for e in generate(alone, GenerationRequest(prompt, 6, GREEDY))
        if isinstance(e, TokenEvent)
    )
    assert texts["a"] == texts["b"] == texts["c"] == reference
