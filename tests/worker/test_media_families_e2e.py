"""Vision families served end to end: the tiny random Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
Qwen3-VL-MoE and Gemma 4 (tests/tiny_vlm.py, families "qwen2-vl", "qwen2.5-vl", "qwen3-vl",
"qwen3-vl-moe", "gemma4") served from their Hugging Face folders, whose projectors (clip
`qwen2vl_merger`, `qwen2.5vl_merger`, `qwen3vl_merger`: Qwen3-VL's image rows carry its two
deepstack features beside the merged embedding; `gemma4v`: an image of 81 tokens between
<|image> and <image|>, decoded with non-causal attention, as mtmd asks for every Gemma 4 but
E2B / E4B) the conversion cache writes beside the text part, answer chat requests with an
image in one worker over a real socket; the greedy answer is llama.cpp's own for the same
files, prompt and image (mtmd_tokenize, mtmd_helper_eval_chunks, one token at a time: M-RoPE
positions as llama-server lays them out), token for token (compared as text through the
worker's /detokenize, and by count), for two images; the prompt holds the image's tokens (64
for Qwen2-VL and Qwen2.5-VL, 16 for Qwen3-VL and Qwen3-VL-MoE, 81 for Gemma 4)."""

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
# The template's rendering of "describe <image>" and the end of a turn (the worker leaves
# the template's BOS to the tokenizer, as mtmd's tokenizer adds it here)
CHATML = ("<|im_start|>user\ndescribe <__media__><|im_end|>\n<|im_start|>assistant\n", "<|im_end|>")
GEMMA4 = ("<|turn>user\ndescribe <__media__><turn|>\n<|turn>model\n", "<turn|>")
# family: image size, image tokens, (prompt, end of turn)
FAMILIES = {
    "qwen2-vl": (tiny_vlm.QWEN_VL_IMAGE_SIZE, tiny_vlm.QWEN_VL_IMAGE_TOKENS, CHATML),
    "qwen2.5-vl": (tiny_vlm.QWEN_VL_IMAGE_SIZE, tiny_vlm.QWEN_VL_IMAGE_TOKENS, CHATML),
    "qwen3-vl": (tiny_vlm.QWEN3_VL_IMAGE_SIZE, tiny_vlm.QWEN3_VL_IMAGE_TOKENS, CHATML),
    "qwen3-vl-moe": (tiny_vlm.QWEN3_VL_IMAGE_SIZE, tiny_vlm.QWEN3_VL_IMAGE_TOKENS, CHATML),
    "gemma4": (tiny_vlm.GEMMA4_IMAGE_SIZE, tiny_vlm.GEMMA4_IMAGE_TOKENS, GEMMA4),
}


def _png(seed: int, size: int) -> bytes:
    from PIL import Image

    picture, _ = tiny_vlm.image(seed, size=size)
    pixels = np.frombuffer(picture.rgb, dtype=np.uint8).reshape(size, size, 3)
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
        "model": "vlm",
        "max_tokens": N,
        "temperature": 0,
        "messages": [{"role": "user", "content": content}],
    }
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    data: dict[str, object] = reply.json()
    return data


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_folder_answers_as_llama_cpp_does(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    family: str,
) -> None:
    size, n_image, (prompt, end_of_turn) = FAMILIES[family]
    vlm = tiny_vlm.cached(tmp_path_factory.getbasetemp(), family)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLORCH_CACHE", str(cache))  # inherited by the worker
    worker = start_worker(
        tmp_path, "--model", f"vlm={vlm.folder}", "--ctx-size", "512", "--parallel", "1",
        "--threads", str(THREADS),
    )  # fmt: skip
    try:
        listed = httpx.get(f"{worker.url}/v1/models", timeout=30).json()["data"]
        assert [m["inputs"] for m in listed] == [["text", "vision"]]
        ggufs = sorted(cache.rglob("*.gguf"))
        (mmproj,) = [p for p in ggufs if "-mmproj-" in p.name]
        (text,) = [p for p in ggufs if p != mmproj]
        eos = httpx.post(
            f"{worker.url}/tokenize", json={"content": end_of_turn, "add_special": False}
        ).json()["tokens"]
        answers = []
        for seed in (0, 1):
            data = _chat(worker.url, _png(seed, size))
            picture, _ = tiny_vlm.image(seed, size=size)
            ref_prompt, expected = tiny_vlm.mtmd_greedy(text, mmproj, prompt, picture, N)
            if eos[0] in expected:  # the worker stops there
                expected = expected[: expected.index(eos[0])]
            want = httpx.post(f"{worker.url}/detokenize", json={"tokens": expected}).json()
            choice = data["choices"][0]  # type: ignore[index]
            usage = data["usage"]  # type: ignore[index]
            print(f"ANSWER seed {seed}: {choice['message']['content']!r} tokens {expected}")
            assert choice["message"]["content"] == want["content"]
            assert usage["completion_tokens"] == len(expected)
            assert usage["prompt_tokens"] == len(ref_prompt) + n_image
            answers.append(expected)
        assert answers[0] != answers[1], "the answer does not depend on the image"
    finally:
        assert worker.stop() == 0
