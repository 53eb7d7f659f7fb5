"""The worker serves a mixture-of-experts, a recurrent and a latent-attention model end to end:
each tiny random checkpoint is converted to F32, served with `llorch serve --model`, and a
greedy /execute gives the tokens llama.cpp's own greedy loop gives for the same GGUF (logits
of the whole sequence recomputed at each step, argmax)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from support import sse_events, start_worker

from llorch.convert import convert, llamacpp
from tests.convert.parity_cases import CASES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
N_TOKENS = 8


ROWS = {
    "moe": "gpt-oss-dequantized",
    "recurrent": "mamba2",
    "latent-attention": "deepseek-v3-mla",
    "hybrid": "qwen35-hybrid",  # DeltaNet states and a KV cache per sequence
}


def reference_greedy(path: Path, prompt: list[int], n: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(int(np.argmax(llamacpp.logits(path, tokens)[-1])))
    return tokens[len(prompt) :]


@pytest.mark.parametrize("kind", list(ROWS))
def test_served_greedy_tokens_are_llama_cpps(kind: str, checkpoint: Any, tmp_path: Path) -> None:
    case = CASES[ROWS[kind]]
    built = checkpoint(case.model_cls, case.config_cls, case.config, tokenizer=case.tokenizer)
    gguf_path = tmp_path / f"{kind}.gguf"
    convert(built.folder, gguf_path, outtype="f32")
    worker = start_worker(
        tmp_path, "--model", str(gguf_path), "--ctx-size", "128", "--parallel", "2"
    )
    try:
        prompt = "hello world, the quick brown fox"
        tokens = httpx.post(
            f"{worker.url}/tokenize", json={"content": prompt, "add_special": True}, timeout=30
        ).json()["tokens"]
        body = {"job_id": kind, "prompt": prompt, "max_tokens": N_TOKENS, "temperature": 0.0}
        with httpx.stream("POST", f"{worker.url}/execute", json=body, timeout=120) as response:
            assert response.status_code == 200
            events = list(sse_events(response))
    finally:
        assert worker.stop() == 0
    served = [e["id"] for e in events if e["type"] == "token"]
    assert events[-1]["type"] == "end"
    want = reference_greedy(gguf_path, tokens, N_TOKENS)
    print(f"SERVED {kind}: {served} (llama.cpp greedy {want})")
    assert served == want[: len(served)] and served
    if len(served) < N_TOKENS:  # stopped at an end-of-generation token
        assert events[-1]["stop_reason"] != "MAX_TOKENS"
