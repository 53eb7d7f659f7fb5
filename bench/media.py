"""Images in, side by side: llorch `--mmproj` vs llama-server `--mmproj`, same files, over HTTP.

    python bench/media.py [--model TEXT.gguf --mmproj MMPROJ.gguf | --tower tiny|base]
                          [--image PNG] [--threads 2] [--rounds 3] [--doc]

Without --model, a random Gemma 3 vision model is built and converted once (as
tests/tiny_vlm.py does): with the tiny tower it measures the serving path rather than a real
model's compute; `--tower base` gives it a SigLIP-base-sized tower (768 wide, 12 layers, 224
pixels), whose encoding costs what a small real tower's does.
Both servers get 4 slots, the same threads and context, and raw prompts with one image
(llorch's /execute `images`, llama-server's /completion `multimodal_data`), streamed:
  ttft       time to the first token of an image request (its text starts with a unique
             number, so nothing is reused), 10 a round
  images/s   N streams at once (1 and 4) of 10 image requests each, 1 token each: images read
             per second of wall time
  2nd turn   the same prompt and image again: its time to first token over the first's
             (the image's KV cache reused, not encoded again)
The time-to-first-token requests alternate between the servers one by one; rounds alternate
which server goes first; medians.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from benchlib import REPO, load, write_section

BEGIN, END = "<!-- bench/media.py -->", "<!-- end bench/media.py -->"
serving = load("bench_serving", REPO / "bench" / "serving.py")
MARKER = "<__media__>"
LLORCH, SERVER = "llorch", "llama-server"
_counter = itertools.count()
EACH = 10  # requests per measurement and stream


# One client per thread, made before the clock starts: httpx's module-level calls build a
# client per request (its SSL context included), ~30-40 ms of the client's own time that a
# time to first token of a few milliseconds would mostly be.
_local = threading.local()


def client() -> httpx.Client:
    if not hasattr(_local, "client"):
        _local.client = httpx.Client(timeout=600)
    return _local.client


def ask(name: str, url: str, image: str, prompt: str | None = None) -> tuple[float, str]:
    """One streamed image request of one token: seconds to the first token (or to the end of
    the prompt's reading, when the first token is the end of the text), and the prompt."""
    text = prompt or f"({next(_counter):05d}) describe {MARKER} in one word"
    if name == LLORCH:
        path = "/execute"
        body: dict = {"job_id": f"m{next(_counter)}", "prompt": text, "images": [image]}
        body |= {"max_tokens": 1, "temperature": 0}
    else:
        path = "/completion"
        body = {"prompt": {"prompt_string": text, "multimodal_data": [image]}}
        body |= {"n_predict": 1, "temperature": 0, "stream": True, "cache_prompt": True}
    http = client()
    sent = time.perf_counter()
    with http.stream("POST", url + path, json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event.get("type") in ("token", "metrics") or (
                    name == SERVER and "content" in event
                ):
                    return time.perf_counter() - sent, text
    raise RuntimeError(f"{name}: no token")


def images_per_second(name: str, url: str, image: str, n: int, each: int = EACH) -> float:
    """n streams of `each` requests one after the other, each stream from its own thread and
    client, all ready before the clock starts."""
    ready, go = threading.Barrier(n + 1), threading.Event()

    def one() -> None:
        client()
        ready.wait()
        go.wait()
        for _ in range(each):
            ask(name, url, image)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    started = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    return n * each / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --tower base: a SigLIP-base-sized tower (ViT-B/16 at 224 pixels, 196 patches pooled to 49
# tokens), so that encoding an image costs what a small real tower's does on this machine
BASE_TOWER = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "patch_size": 16,
}


def tiny_model(tmp: Path, tower: str) -> tuple[Path, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    import tiny_vlm

    built = tiny_vlm._built(tmp, "gemma3")
    if tower == "base":
        tiny_vlm.build_checkpoint(built.folder, vision=BASE_TOWER, image_size=224, image_tokens=49)
    else:
        tiny_vlm.build_checkpoint(built.folder)
    from llorch.convert import convert

    convert(built.folder, built.text, outtype="f32")  # the text part and its projector
    return built.text, built.mmproj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--mmproj", type=Path)
    parser.add_argument("--image", type=Path)
    parser.add_argument(
        "--tower",
        choices=("tiny", "base"),
        default="tiny",
        help="without --model: the random tower's size (tiny: the serving path alone)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--doc", action="store_true", help="write docs/BENCHMARKS.md's section")
    ns = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-media-"))
    model, mmproj = (ns.model, ns.mmproj) if ns.model else tiny_model(tmp, ns.tower)
    if ns.image is not None:
        image = base64.b64encode(ns.image.read_bytes()).decode()
    else:
        from PIL import Image

        path = tmp / "image.png"
        Image.effect_noise((64, 64), 64).convert("RGB").save(path)
        image = base64.b64encode(path.read_bytes()).decode()
    threads, ctx = str(ns.threads), 2048
    # llama-server's media marker is random per process unless pinned (server-common.cpp)
    os.environ["LLAMA_MEDIA_MARKER"] = MARKER
    port_a, port_b = free_port(), free_port()
    servers = {
        LLORCH: serving.start(
            LLORCH,
            [sys.executable, "-m", "llorch.cli", "serve", "--model", str(model), "--mmproj",
             str(mmproj), "--port", str(port_a), "--parallel", "4", "--ctx-size", str(ctx),
             "--threads", threads],
            port_a, "/ready", tmp,
        ),
        SERVER: serving.start(
            SERVER,
            [str(serving.llama_server_binary()), "-m", str(model), "--mmproj", str(mmproj),
             "--port", str(port_b), "-np", "4", "-c", str(4 * ctx), "-t", threads, "--no-webui"],
            port_b, "/health", tmp,
        ),
    }  # fmt: skip
    results: dict[str, dict[str, list[float]]] = {n: {} for n in servers}
    try:
        for name, server in servers.items():  # warm-up: the first encode allocates buffers
            ask(name, server.url, image)
        for r in range(ns.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            # one request of each server in turn, which goes first alternating: this
            # machine's speed drifts within seconds, by more than the difference measured
            for i in range(EACH):
                for name in order if i % 2 == 0 else reversed(order):
                    url, got = servers[name].url, results[name]
                    first, prompt = ask(name, url, image)
                    second, _ = ask(name, url, image, prompt)
                    got.setdefault("ttft", []).append(first)
                    got.setdefault("second/first", []).append(second / first)
            for name in order:
                url, got = servers[name].url, results[name]
                for n in (1, 4):
                    got.setdefault(f"images/s x{n}", []).append(
                        images_per_second(name, url, image, n)
                    )
    finally:
        for server in servers.values():
            server.proc.terminate()
            server.proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    lines = report(results, model, ns)
    print("\n".join(lines))
    if ns.doc:
        # one section per tower size: the tiny one's keeps the markers it always had
        tag = "" if ns.model or ns.tower == "tiny" else f" --tower {ns.tower}"
        begin, end = BEGIN.replace(" -->", f"{tag} -->"), END.replace(" -->", f"{tag} -->")
        write_section("\n".join([begin, *lines, end]), begin, end)


def report(
    results: dict[str, dict[str, list[float]]], model: Path, ns: argparse.Namespace
) -> list[str]:
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    ours, theirs = med[LLORCH], med[SERVER]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Images in: llorch vs llama-server `--mmproj`"
        + ("" if ns.model or ns.tower == "tiny" else f" (`--tower {ns.tower}`)"),
        "",
        f"`bench/media.py`, {when}, model {model.name}"
        f"{'' if ns.model else f' (random, {ns.tower} tower)'}, {ns.threads} threads, "
        f"{ns.rounds} rounds, medians (load: {os.getloadavg()[0]:.1f}).",
        "",
        "| | llorch | llama-server | llorch / llama-server |",
        "|---|---|---|---|",
        f"| time to first token, one image (ms) | {ours['ttft'] * 1e3:.1f} | "
        f"{theirs['ttft'] * 1e3:.1f} | {theirs['ttft'] / ours['ttft']:.2f}x speed |",
    ]
    for n in (1, 4):
        key = f"images/s x{n}"
        lines.append(
            f"| images/s, {n} at once | {ours[key]:.1f} | {theirs[key]:.1f} | "
            f"{ours[key] / theirs[key]:.2f}x |"
        )
    lines.append(
        f"| 2nd turn's ttft / 1st's | {ours['second/first']:.2f} | {theirs['second/first']:.2f} | |"
    )
    return lines


if __name__ == "__main__":
    main()
