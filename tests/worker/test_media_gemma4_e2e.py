"""Gemma 4 served end to end: the tiny random Gemma 4 (tests/tiny_vlm.py, family "gemma4")
served from its Hugging Face folder, whose projector (clip `gemma4v`: its image chunk decoded
with non-causal attention, as mtmd asks for every Gemma 4 but E2B / E4B) the conversion cache
writes beside the text part, answers chat requests with an image in one worker over a real
socket; the greedy answer is llama.cpp's own for the same files, prompt and image
(mtmd_tokenize, mtmd_helper_eval_chunks, one token at a time), token for token (compared as
text through the worker's /detokenize, and by count), for two images; the prompt holds the
image's 81 tokens between <|image> and <image|>."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import tiny_vlm
from support import THREADS, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N = 10
SIZE, N_IMAGE = tiny_vlm.GEMMA4_IMAGE_SIZE, tiny_vlm.GEMMA4_IMAGE_TOKENS
# the template's rendering (the worker leaves the template's BOS to the tokenizer, as mtmd's
# tokenizer adds it here)
PROMPT = "<|turn>user\ndescribe <__media__><turn|>\n<|turn>model\n"


def _png(seed: int) -> bytes:
    from PIL import Image

    picture, _ = tiny_vlm.image(seed, size=SIZE)
    pixels = np.frombuffer(picture.rgb, dtype=np.uint8).reshape(SIZE, SIZE, 3)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _chat(url: str, image: bytes) -> dict[str, object]:
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    content = [
        {"type": "text", "text": "describe "},
        {"type": "image_url", "image_url": {"url": uri}},
    ]
    body = {
        "model": "gemma",
        "max_tokens": N,
        "temperature": 0,
        "messages": [{"role": "user", "content": content}],
    }
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    data: dict[str, object] = reply.json()
    return data


def test_a_gemma4_folder_answers_as_llama_cpp_does(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    vlm = tiny_vlm.cached(tmp_path_factory.getbasetemp(), "gemma4")
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLORCH_CACHE", str(cache))  # inherited by the worker
    worker = start_worker(
        tmp_path, "--model", f"gemma={vlm.folder}", "--ctx-size", "512", "--parallel", "1",
        "--threads", str(THREADS),
    )  # fmt: skip
    try:
        listed = httpx.get(f"{worker.url}/v1/models", timeout=30).json()["data"]
        assert [m["inputs"] for m in listed] == [["text", "vision"]]
        ggufs = sorted(cache.rglob("*.gguf"))
        (mmproj,) = [p for p in ggufs if "-mmproj-" in p.name]
        (text,) = [p for p in ggufs if p != mmproj]
        eos = httpx.post(
            f"{worker.url}/tokenize", json={"content": "<turn|>", "add_special": False}
        ).json()["tokens"]
        answers = []
        for seed in (0, 1):
            data = _chat(worker.url, _png(seed))
            picture, _ = tiny_vlm.image(seed, size=SIZE)
            ref_prompt, expected = tiny_vlm.mtmd_greedy(text, mmproj, PROMPT, picture, N)
            if eos[0] in expected:  # the worker stops there
                expected = expected[: expected.index(eos[0])]
            want = httpx.post(f"{worker.url}/detokenize", json={"tokens": expected}).json()
            choice = data["choices"][0]  # type: ignore[index]
            usage = data["usage"]  # type: ignore[index]
            print(f"ANSWER seed {seed}: {choice['message']['content']!r} tokens {expected}")
            assert choice["message"]["content"] == want["content"]
            assert usage["completion_tokens"] == len(expected)
            assert usage["prompt_tokens"] == len(ref_prompt) + N_IMAGE
            answers.append(expected)
        assert answers[0] != answers[1], "the answer does not depend on the image"
    finally:
        assert worker.stop() == 0
