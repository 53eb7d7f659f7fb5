"""Qwen3-ASR's audio served end to end: the tiny random Qwen3-ASR (tests/tiny_alm.py
`cached_qwen3asr`: its text part and its clip `qwen3a` projector, as llorch converts them)
served with `--mmproj` over a real socket reads audio; `/execute` with a WAV clip answers with
the greedy tokens and log-probabilities of llama.cpp's own mtmd path on the same files, prompt
and samples, for two clips: one whose frames fill their last chunk (2.995 s: 39 rows between
`<|audio_start|>` and `<|audio_end|>`) and one mtmd pads (2.5 s: 39 rows too, 6 of them from
the padding; see tests/convert/test_qwen3asr_projector.py)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import tiny_alm
from support import THREADS, start_worker
from tiny_alm import float_wav

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
        ours = tiny_alm.execute(url, PROMPT, float_wav(samples), N, f"asr-{seed}")
        tiny_alm.assert_answers_as(ours, theirs)
        assert ours.prompt_tokens == len(theirs["before"]) + rows + len(theirs["after"])
        firsts.append(ours.logprobs[0])
    assert abs(firsts[0] - firsts[1]) > 1e-4  # the clip is read
