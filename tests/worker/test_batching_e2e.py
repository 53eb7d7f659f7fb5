"""Continuous batching against the real model: interleaved streams never cross.

llama.cpp's kernels differ slightly between one-token and many-token batches, so greedy text
alone and in a batch may legitimately part ways after a few tokens. The check is instead a
teacher-forced re-score: one forward pass over prompt + output, and every generated token must
be the argmax there within a logit gap of 0.5 (a token taken from another sequence scores gaps
of several logits, which the negative control below shows).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import llama_cpp as ll
import numpy as np
import pytest
from support import FRANCE, THREADS, WorkerProcess, sse_events, start_worker

pytestmark = pytest.mark.e2e

PROMPTS = [
    FRANCE,
    "The largest planet in the solar system is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "import numpy as np\n\narr = np.",
    "The first president of the United States was",
]
MAX_GAP = 0.5


@pytest.fixture(scope="module")
def batching_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(
        tmp_path_factory.mktemp("batching"),
        "--parallel",
        "8",
        "--ctx-size",
        "512",
        "--threads",
        str(THREADS),
    )
    yield proc
    proc.stop()


class Scorer:
    """Teacher-forced logits from a separate llama.cpp context over the same GGUF."""

    def __init__(self, path: str) -> None:
        self.model = ll.llama_model_load_from_file(path.encode(), ll.llama_model_default_params())
        params = ll.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = 512, 512, 512
        params.n_threads = params.n_threads_batch = THREADS
        self.ctx = ll.llama_init_from_model(self.model, params)
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))

    def gaps(self, prompt: list[int], output: list[int]) -> list[float]:
        """For each generated token: max logit - logit of that token, given everything before."""
        tokens = prompt + output
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        batch = ll.llama_batch_init(len(tokens), 0, 1)
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i >= len(prompt) - 1
        batch.n_tokens = len(tokens)
        assert ll.llama_decode(self.ctx, batch) == 0
        gaps = []
        for j, token in enumerate(output):
            row = ll.llama_get_logits_ith(self.ctx, len(prompt) - 1 + j)
            logits = np.ctypeslib.as_array(row, shape=(self.n_vocab,))
            gaps.append(float(logits.max() - logits[token]))
        ll.llama_batch_free(batch)
        return gaps

    def close(self) -> None:
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)


@pytest.fixture(scope="module")
def scorer(model_path) -> Iterator[Scorer]:
    instance = Scorer(str(model_path))
    yield instance
    instance.close()


def generate(url: str, prompt: str, max_tokens: int) -> tuple[list[int], float, float, dict]:
    body = {
        "job_id": f"b-{hash(prompt)}",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    ids: list[int] = []
    first = last = 0.0
    metrics: dict = {}
    with httpx.stream("POST", f"{url}/execute", json=body, timeout=300) as response:
        assert response.status_code == 200
        for event in sse_events(response):
            if event["type"] == "token":
                ids.append(event["id"])
                last = time.monotonic()
                first = first or last
            elif event["type"] == "metrics":
                metrics = event
    return ids, first, last, metrics


def tokenize(url: str, text: str) -> list[int]:
    return httpx.post(f"{url}/tokenize", json={"content": text}).json()["tokens"]


def test_eight_interleaved_greedy_streams_rescore_as_argmax(batching_worker, scorer):
    results: dict[str, tuple[list[int], float, float, dict]] = {}

    def run(prompt: str) -> None:
        results[prompt] = generate(batching_worker.url, prompt, 32)

    threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The streams really overlapped: every stream began before every other one ended.
    starts = [r[1] for r in results.values()]
    ends = [r[2] for r in results.values()]
    assert max(starts) < min(ends), "the requests ran one after the other, not together"
    for prompt, (ids, *_rest) in results.items():
        assert len(ids) == 32
        gaps = scorer.gaps(tokenize(batching_worker.url, prompt), ids)
        assert max(gaps) <= MAX_GAP, (prompt, gaps)


def test_the_rescore_catches_crossed_sequences(batching_worker, scorer):
    # Negative control: output generated for one prompt, scored as if it belonged to another.
    a, *_ = generate(batching_worker.url, PROMPTS[0], 16)
    b, *_ = generate(batching_worker.url, PROMPTS[1], 16)
    crossed = scorer.gaps(tokenize(batching_worker.url, PROMPTS[1]), a[:8] + b[8:])
    assert max(crossed) > 3 * MAX_GAP


def test_prefix_reuse_skips_the_shared_prompt(batching_worker, scorer):
    story = "The lighthouse keeper climbed the stairs every evening. " * 20
    ids1, _, _, first = generate(batching_worker.url, story + "One night", 8)
    ids2, _, _, second = generate(batching_worker.url, story + "One night", 8)
    assert first["prompt_cached"] == 0 or first["prompt_cached"] < second["prompt_cached"]
    assert second["prompt_cached"] >= first["prompt_tokens"] - 1
    # A different ending reuses the shared part only, and still computes the right thing.
    ids3, _, _, third = generate(batching_worker.url, story + "In the morning", 8)
    assert 0 < third["prompt_cached"] < third["prompt_tokens"]
    prompt3 = tokenize(batching_worker.url, story + "In the morning")
    assert max(scorer.gaps(prompt3, ids3)) <= MAX_GAP
    assert ids1 == ids2
