"""Images in, end to end: a tiny random Gemma 3 vision model (tests/tiny_vlm.py: the text part
and its projector converted by llorch) served by llama-server
`--mmproj` and by a llorch worker `--mmproj` over real sockets.

- The same image and prompt give the same greedy tokens, log-probabilities and prompt length
  on both (llama-server's /completion with multimodal_data, our /execute with images), and
  different images give different tokens (the image is read, not ignored).
- A chat with a data-URI image through the official openai client answers as llama-server
  does on the prompt the template renders.
- Image requests decoded in one batch with text-only ones answer as they do alone.
- A second turn about the same image reuses its KV cache (the image is not encoded again).
- Every bad-media case is a 400 naming the part, and leaves no slot busy.
"""

from __future__ import annotations

import base64
import io
import os
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tiny_vlm
from support import THREADS, free_port, sse_events, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MARKER = "<__media__>"
N_PREDICT = 12
PROMPT = f"the quick {MARKER} brown fox"
MAX_PIXELS = 10_000  # 64 x 64 images pass, 200 x 200 do not


def _png(seed: int | None, size: int = tiny_vlm.IMAGE_SIZE, color: tuple[int, ...] = ()) -> bytes:
    from PIL import Image

    if seed is None:
        image = Image.new("RGB", (size, size), color)
    else:
        pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


IMAGES = {"noise-0": _png(0), "noise-5": _png(5), "red": _png(None, color=(255, 0, 0))}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _binary() -> Path:
    from importlib.metadata import version

    base = Path.home() / ".cache" / "llorch" / "llama-server" / version("llama_cpp_python")
    return base / "build" / "bin" / "llama-server"


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> tiny_vlm.TinyVlm:
    return tiny_vlm.cached(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def served(vlm: tiny_vlm.TinyVlm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    binary = _binary()
    if not binary.exists():
        pytest.skip(f"no llama-server at {binary} (bench/serving.py llama_server_binary())")
    tmp = tmp_path_factory.mktemp("media")
    port = free_port()
    cmd = [str(binary), "-m", str(vlm.text), "--mmproj", str(vlm.mmproj), "--port", str(port)]
    cmd += ["-c", "1024", "-np", "1", "-t", str(THREADS), "--no-webui"]
    # llama-server picks a random marker per process; this pins mtmd's default instead.
    env = {**os.environ, "LLAMA_MEDIA_MARKER": MARKER}
    with (tmp / "llama-server.log").open("wb") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    worker = start_worker(
        tmp, "--model", str(vlm.text), "--mmproj", str(vlm.mmproj), "--ctx-size", "1024",
        "--parallel", "4", "--threads", str(THREADS), "--max-media-per-request", "2",
        "--max-image-pixels", str(MAX_PIXELS),
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(url, server, tmp / "llama-server.log")
        yield {"llama_server": url, "worker": worker.url}
    finally:
        server.terminate()
        server.wait(30)
        worker.stop()


def _wait(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"llama-server did not start:\n{log.read_text()[-3000:]}")


def _theirs(served: dict, prompt: str, images: list[bytes], n: int = N_PREDICT) -> dict:
    body = {
        "prompt": {"prompt_string": prompt, "multimodal_data": [_b64(i) for i in images]},
        "n_predict": n,
        "temperature": 0.0,
        "n_probs": 3,
        "return_tokens": True,
        "cache_prompt": False,
    }
    reply = httpx.post(f"{served['llama_server']}/completion", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _ours(
    served: dict,
    prompt: str,
    images: list[bytes],
    job: str,
    n: int = N_PREDICT,
    first_token: threading.Event | None = None,
) -> dict:
    """/execute's events gathered: token ids, their log-probabilities, the metrics, and when
    the job started and ended (to show requests overlapped); `first_token` set at the first."""
    body = {
        "job_id": job,
        "prompt": prompt,
        "images": [_b64(i) for i in images],
        "max_tokens": n,
        "temperature": 0.0,
        "top_logprobs": 3,
    }
    out: dict[str, Any] = {"tokens": [], "logprobs": [], "top": []}
    with httpx.stream("POST", f"{served['worker']}/execute", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        for event in sse_events(r):
            if event["type"] == "started":
                out["started"] = time.monotonic()
            elif event["type"] == "token":
                if first_token is not None:
                    first_token.set()
                out["tokens"].append(event["id"])
                out["logprobs"].append(event["logprob"])
                out["top"].append({t["id"]: t["logprob"] for t in event["top_logprobs"]})
            elif event["type"] == "metrics":
                out["metrics"] = event
            elif event["type"] == "error":
                raise AssertionError(event)
    out["ended"] = time.monotonic()
    return out


def _same_answer(ours: dict, theirs: dict) -> None:
    """The same token ids, and the same top log-probabilities at each step. llama-server
    leaves out the probabilities of a step whose token ends inside a UTF-8 character (a byte
    token), so its steps are matched to ours in order, by their alternatives."""
    assert ours["tokens"] == theirs["tokens"]
    steps = theirs["completion_probabilities"]
    matched = 0
    for mine in ours["top"]:
        if matched < len(steps):
            alts = {a["id"]: a["logprob"] for a in steps[matched]["top_logprobs"]}
            if set(alts) == set(mine):
                for token, logprob in alts.items():
                    assert mine[token] == pytest.approx(logprob, abs=2e-3)
                matched += 1
    assert matched == len(steps) >= len(ours["top"]) // 2


def test_greedy_tokens_equal_llama_servers(served: dict) -> None:
    answers = []
    for name, image in IMAGES.items():
        theirs = _theirs(served, PROMPT, [image])
        ours = _ours(served, PROMPT, [image], f"same-{name}")
        _same_answer(ours, theirs)
        # usage counts the image's tokens, as llama-server does
        assert ours["metrics"]["prompt_tokens"] == theirs["tokens_evaluated"]
        assert ours["metrics"]["prompt_tokens"] > tiny_vlm.IMAGE_TOKENS
        answers.append(tuple(ours["tokens"]))
    assert len(set(answers)) == len(answers), "the answer does not depend on the image"


def test_two_images_in_one_prompt(served: dict) -> None:
    prompt = f"a {MARKER} and {MARKER} b"
    images = [IMAGES["red"], IMAGES["noise-5"]]
    _same_answer(_ours(served, prompt, images, "two"), _theirs(served, prompt, images))


def test_openai_client_chat_with_a_data_uri_image(served: dict) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{served['worker']}/v1", api_key="unused")
    uri = "data:image/png;base64," + _b64(IMAGES["noise-5"])
    reply = client.chat.completions.create(
        model="tiny",
        max_tokens=N_PREDICT,
        temperature=0,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe "},
                    {"type": "image_url", "image_url": {"url": uri}},
                    {"type": "text", "text": " the image"},
                ],
            }
        ],
    )
    # The tiny checkpoint's template puts a user turn as Gemma's does; the image goes where
    # its part was, and mtmd wraps it in <start_of_image> ... <end_of_image>.
    # (llama-server adds the BOS the template writes as <s>)
    prompt = f"<start_of_turn>user\ndescribe {MARKER} the image<end_of_turn>\n"
    prompt += "<start_of_turn>model\n"
    theirs = _theirs(served, prompt, [IMAGES["noise-5"]])
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == theirs["tokens_evaluated"]
    assert reply.choices[0].message.content == theirs["content"]


def test_anthropic_image_block_and_its_token_count(served: dict) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": _b64(IMAGES["red"])},
    }
    messages = [{"role": "user", "content": [image, {"type": "text", "text": "describe it"}]}]
    body = {"model": "tiny", "max_tokens": N_PREDICT, "temperature": 0, "messages": messages}
    reply = httpx.post(f"{served['worker']}/v1/messages", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    # Anthropic's blocks are separate pieces: a blank line between them
    prompt = f"<start_of_turn>user\n{MARKER}\n\ndescribe it<end_of_turn>\n<start_of_turn>model\n"
    theirs = _theirs(served, prompt, [IMAGES["red"]])
    answer = reply.json()
    assert "".join(b["text"] for b in answer["content"] if b["type"] == "text") == theirs["content"]
    usage = answer["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == theirs["tokens_evaluated"]
    counted = httpx.post(
        f"{served['worker']}/v1/messages/count_tokens",
        json={"model": "tiny", "messages": messages},
        timeout=300,
    )
    assert counted.json()["input_tokens"] == theirs["tokens_evaluated"]


def test_responses_input_image(served: dict) -> None:
    uri = "data:image/png;base64," + _b64(IMAGES["noise-0"])
    content = [
        {"type": "input_text", "text": "describe "},
        {"type": "input_image", "image_url": uri},
        {"type": "input_text", "text": " the image"},
    ]
    body = {
        "model": "tiny",
        "max_output_tokens": N_PREDICT,
        "temperature": 0,
        "input": [{"role": "user", "content": content}],
    }
    reply = httpx.post(f"{served['worker']}/v1/responses", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    prompt = f"<start_of_turn>user\ndescribe {MARKER} the image<end_of_turn>\n"
    theirs = _theirs(served, prompt + "<start_of_turn>model\n", [IMAGES["noise-0"]])
    output = reply.json()["output"]
    text = "".join(
        part["text"] for item in output if item["type"] == "message" for part in item["content"]
    )
    assert text == theirs["content"]
    assert reply.json()["usage"]["input_tokens"] == theirs["tokens_evaluated"]


def test_images_batched_with_text_requests(served: dict) -> None:
    alone = {name: _theirs(served, PROMPT, [IMAGES[name]]) for name in ("noise-0", "red")}
    text_prompt = "the quick brown fox jumps over the lazy dog"
    text_alone = _ours(served, text_prompt, [], "text-alone", n=32)
    results: dict[str, dict] = {}

    def run(key: str, prompt: str, images: list[bytes], n: int, *first: threading.Event) -> None:
        results[key] = _ours(served, prompt, images, f"mixed-{key}", n, *first)

    # Two text requests long enough to outlast the image requests, which start once both
    # generate and end before they are cancelled: the runs overlap by construction, whatever
    # the machine's speed.
    generating = [threading.Event(), threading.Event()]
    texts = [
        threading.Thread(target=run, args=(f"text-{i}", text_prompt, [], 900, generating[i]))
        for i in range(2)
    ]
    for job in texts:
        job.start()
    assert all(event.wait(120) for event in generating)
    images = [
        threading.Thread(target=run, args=(name, PROMPT, [IMAGES[name]], N_PREDICT))
        for name in ("noise-0", "red")
    ]
    for job in images:
        job.start()
    for job in images:
        job.join()
    for i in range(2):
        httpx.delete(f"{served['worker']}/jobs/mixed-text-{i}", timeout=30)
    for job in texts:
        job.join()
    for name in ("noise-0", "red"):
        _same_answer(results[name], alone[name])
        for t in ("text-0", "text-1"):  # decoded while both text requests were
            assert results[t]["started"] < results[name]["started"] < results[t]["ended"]
    for key in ("text-0", "text-1"):
        # in a batch with images, a text request's tokens are those it gets alone
        n = len(text_alone["tokens"])
        assert n > 0 and results[key]["tokens"][:n] == text_alone["tokens"]
        assert len(results[key]["tokens"]) > n  # still generating when the images ended


def test_a_second_turn_reuses_the_images_cache(served: dict) -> None:
    image = _png(11)
    first = _ours(served, PROMPT, [image], "turn-1")
    second = _ours(served, PROMPT + " again", [image], "turn-2")
    after = httpx.post(
        f"{served['llama_server']}/tokenize", json={"content": PROMPT.split(MARKER)[1]}, timeout=30
    ).json()["tokens"]
    # the prompt up to the end of the image (<end_of_image> included), and before its start
    image_end = first["metrics"]["prompt_tokens"] - len(after)
    image_start = image_end - 1 - tiny_vlm.IMAGE_TOKENS
    # everything before the new text was in the KV cache: the image was not read again
    assert second["metrics"]["prompt_cached"] >= image_end
    # a different image after the same text is not taken for the cached one
    other = _ours(served, PROMPT + " again", [_png(12)], "turn-3")
    assert other["metrics"]["prompt_cached"] <= image_start


# -- bad media ---------------------------------------------------------------------------------


def _bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG whose header says width x height, with a few bytes of data: what a decoder would
    inflate to gigabytes if it trusted the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def _tiff() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="TIFF")
    return out.getvalue()


BAD = {
    "corrupt": (os.urandom(64) + b"not an image", "not an image llorch reads"),
    "truncated": (_png(3)[: len(_png(3)) // 2], "truncated"),
    "bomb": (_bomb(), "50000x50000"),
    "too-many-pixels": (_png(4, size=200), "--max-image-pixels"),
    "unread-format": (_tiff(), "TIFF"),
}


def _capacity_idle(served: dict) -> None:
    capacity = httpx.get(f"{served['worker']}/capacity", timeout=30).json()
    assert capacity["slots"]["busy"] == 0 and capacity["queue"]["depth"] == 0


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_image_is_a_400_naming_the_part(served: dict, case: str) -> None:
    data, why = BAD[case]
    uri = "data:image/png;base64," + _b64(data)
    body = {
        "model": "tiny",
        "max_tokens": 4,
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]},
        ],
    }
    reply = httpx.post(f"{served['worker']}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "messages[2].content[0].image_url.url"
    assert why in error["message"]
    # the contract's /execute names its field too
    execute = {"job_id": f"bad-{case}", "prompt": PROMPT, "images": [_b64(data)], "max_tokens": 4}
    reply = httpx.post(f"{served['worker']}/execute", json=execute, timeout=60)
    assert reply.status_code == 400, reply.text
    (entry,) = reply.json()["errors"]
    assert entry["field"] == "images[0]" and why in entry["message"]
    _capacity_idle(served)


def test_more_images_than_allowed(served: dict) -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(_png(1))}}
    body = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": [part] * 3}]}
    reply = httpx.post(f"{served['worker']}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    assert "at most 2" in reply.json()["error"]["message"]
    assert "--max-media-per-request" in reply.json()["error"]["message"]
    _capacity_idle(served)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("data:image/png;base64,@@@@", "not valid base64"),
        ("data:image/png,rawbytes", "must be base64"),
        ("http://127.0.0.1:1/cat.png", "--allowed-media-hosts"),
        ("ftp://example.com/cat.png", "data: URI"),
    ],
)
def test_bad_image_urls(served: dict, url: str, why: str) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    body = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": [part]}]}
    reply = httpx.post(f"{served['worker']}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    assert why in reply.json()["error"]["message"]


def test_markers_and_images_must_agree(served: dict) -> None:
    body = {"job_id": "markers", "prompt": "no marker here", "images": [_b64(_png(1))]}
    reply = httpx.post(f"{served['worker']}/execute", json=body | {"max_tokens": 4}, timeout=60)
    assert reply.status_code == 400, reply.text
    assert "0 media markers" in reply.json()["errors"][0]["message"]


def test_models_and_capacity_say_the_model_reads_images(served: dict) -> None:
    models = httpx.get(f"{served['worker']}/v1/models", timeout=30).json()
    assert models["data"][0]["inputs"] == ["text", "vision"]
    capacity = httpx.get(f"{served['worker']}/capacity", timeout=30).json()
    assert capacity["inputs"] == ["text", "vision"]
