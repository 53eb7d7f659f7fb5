"""The state the batch decoder keeps per slot and per sequence (worker/backend/batch.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from llorch.worker.backend import sampling
from llorch.worker.backend.budget import ThinkingBudget
from llorch.worker.backend.protocol import GenerationRequest, LoraKey, Scored
from llorch.worker.backend.text import SequenceText


@dataclass
class Drafting:
    """Speculative decoding of one sequence (speculative.py): whether it drafts, the draft
    proposed for the next decode, the draft in the decode now (after next_token), and the
    totals."""

    on: bool = False
    proposed: list[int] = field(default_factory=list)
    verifying: list[int] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0
    max_len: int = 0  # the longest draft to ask for next (adapts)
    pause: int = 0  # steps left without drafting, after drafts that missed at once
    misses: int = 0  # such drafts in a row


@dataclass
class Echo:
    """Scoring the prompt (echo): (batch index, the prompt token its logits predict) of this
    step, and the scores of the prompt so far (its first token has none: nothing predicts
    it)."""

    to_score: list[tuple[int, int]] = field(default_factory=list)
    prompt_scores: list[Scored] = field(default_factory=list)


@dataclass
class SharedPrompt:
    """The same prompt as a sequence still reading it (n > 1, or identical requests): a
    follower waits, then copies its leader's KV cache instead of reading the prompt again."""

    leader: Slot | None = None
    followers: list[Slot] = field(default_factory=list)


@dataclass
class SeqState:
    """The state of one request while it occupies a slot."""

    key: object
    request: GenerationRequest
    chain: sampling.SamplerChain
    to_ingest: list[int]
    reused: int
    added_at: float = field(default_factory=time.perf_counter)
    first_token_at: float = 0.0
    next_token: int | None = None  # sampled, still to be decoded
    output: SequenceText = field(init=False)
    cancelled: bool = False
    in_graph: bool = False  # sampled inside llama.cpp's graph (backend sampling)
    spec: Drafting = field(default_factory=Drafting)
    echo: Echo = field(default_factory=Echo)
    shared: SharedPrompt = field(default_factory=SharedPrompt)
    # The reasoning budget's state: which closing-tag token is forced next, if any.
    budget: ThinkingBudget | None = field(init=False)

    def __post_init__(self) -> None:
        self.output = SequenceText(self.key, self.request.stop, self.request.max_tokens)
        limit = self.request.reasoning_budget
        self.budget = ThinkingBudget(limit) if limit is not None else None


@dataclass
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens in the KV cache, positions 0..n-1
    seq: SeqState | None = None
    cached_lora: LoraKey = ()  # the adapters the cached tokens were decoded with


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
