"""Qwen3-ASR's audio served end to end: the tiny random Qwen3-ASR (tests/tiny_alm.py
`cached_qwen3asr`: its text part and its clip `qwen3a` projector, as llorch converts them)
served with `--mmproj` over a real socket reads audio; `/execute` with a WAV clip answers with
the greedy tokens and log-probabilities of llama.cpp's own mtmd path on the same files, prompt
and samples, for two clips: one whose frames fill their last chunk (2.995 s: 39 rows between
`<|audio_start|>` and `<|audio_end|>`) and one mtmd pads (2.5 s: 39 rows too, 6 of them from
the padding; see tests/convert/test_qwen3asr_projector.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest
import tiny_alm
from support import THREADS, sse_events, start_worker

from tests.worker.test_audio_header import float_wav

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N = 6
CLIPS = {2.995: 39, 2.5: 39}  # seconds: mtmd's rows (13 per chunk of 100 frames)
PROMPT = "<|im_start|>user\nlisten <__media__><|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    alm = tiny_alm.cached_qwen3asr(tmp_path_factory.getbasetemp())
    worker = start_worker(
        tmp_path_factory.mktemp("qwen3asr"),
        *("--model", f"asr={alm.text}", "--mmproj", f"asr={alm.mmproj}"),
        *("--ctx-size", "1024", "--parallel", "2", "--threads", str(THREADS)),
    )
    try:
        yield alm, worker.url
    finally:
        worker.stop()


def _execute(url: str, clip: bytes, job: str) -> tuple[list[int], list[float], int]:
    body = {
        "job_id": job,
        "prompt": PROMPT,
        "audio": [base64.b64encode(clip).decode()],
        "max_tokens": N,
        "temperature": 0.0,
        "top_logprobs": 1,
    }
    tokens, logprobs, prompt_tokens = [], [], 0
    with httpx.stream("POST", f"{url}/execute", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        for event in sse_events(r):
            assert event["type"] != "error", event
            if event["type"] == "token":
                tokens.append(event["id"])
                logprobs.append(event["logprob"])
            elif event["type"] == "metrics":
                prompt_tokens = event["prompt_tokens"]
    return tokens, logprobs, prompt_tokens


def test_execute_answers_as_llama_cpps_own_path(served, tmp_path: Path) -> None:
    alm, url = served
    listed = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    assert [m["inputs"] for m in listed] == [["text", "audio"]]
    firsts = []
    for seed, (seconds, rows) in enumerate(CLIPS.items()):
        samples = tiny_alm.pcm(seed, seconds=seconds)
        theirs = tiny_alm.mtmd_greedy(
            alm.text, alm.mmproj, samples, tmp_path / str(seed), PROMPT, N
        )
        assert len(theirs["rows"]) == rows
        tokens, logprobs, prompt_tokens = _execute(url, float_wav(samples), f"asr-{seed}")
        assert tokens == theirs["tokens"].tolist()
        assert prompt_tokens == len(theirs["before"]) + rows + len(theirs["after"])
        logits = theirs["logits"].astype(np.float64)
        peak = logits.max(axis=1, keepdims=True)
        log_softmax = logits - peak - np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))
        np.testing.assert_allclose(logprobs, log_softmax[np.arange(N), tokens], atol=1e-3)
        firsts.append(logprobs[0])
    assert abs(firsts[0] - firsts[1]) > 1e-4  # the clip is read
