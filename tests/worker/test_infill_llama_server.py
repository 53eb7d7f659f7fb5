"""`/infill` against llama-server's on the same GGUF: the prompt and the greedy middle.

Tiny coder checkpoints (tests/fim_checkpoints.py) are converted by llorch and served by both
llama-server (compiled from the llama.cpp that llama-cpp-python vendors: bench/serving.py
llama_server_binary() builds it into the cache once; skipped when it is not there) and a
llorch worker. llama-server's /infill answer carries its prompt as text (special tokens
spelled out) and its token count: both must equal those of the sequence worker/fim.py
assembles, and the greedy 16-token middles (their token ids) must be the same. Qwen 2.5
Coder's tokens cover the repository-level form (FIM_REP, FIM_SEP); the CodeLlama-style one the
snippet separators, BOS and a SentencePiece vocabulary.

Both run with the same budget: a context of 4096 per slot, llama-server's default batch of
2048 (the worker's FIM window at that context), and n_predict 16, given to llama-server as its
-n since its format_prompt_infill reads the server's n_predict, not the request's.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fim_checkpoints import build
from support import THREADS, free_port, start_worker

from llorch.convert import convert, llamacpp
from llorch.worker import fim
from llorch.worker.backend.protocol import FimTokens

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N_CTX, N_PREDICT = 4096, 16
CODE = "def add(a, b):\n    total = a + b\n    return total\n\n"
CASES = {
    "plain": {"input_prefix": "def mul(a, b):\n    ", "input_suffix": "\n\n" + CODE},
    "prompt-and-extra": {
        "input_prefix": CODE + "def sub(a, b):\n",
        "input_suffix": "\nprint(sub(3, 2))\n",
        "prompt": "    ret",
        "input_extra": [
            {"filename": "util.py", "text": "X = 1\n"},
            {"text": "y = [1, 2]\n"},  # llama-server names it "tmp"
        ],
    },
    # Long enough to be trimmed: the prefix beyond 1536 tokens, the suffix beyond 510, and the
    # other files beyond n_ctx - n_batch - 2 * n_predict = 2016.
    "trimmed": {
        "input_prefix": CODE * 120,
        "input_suffix": CODE * 60,
        "input_extra": [{"filename": f"m{i}.py", "text": CODE * 8} for i in range(30)],
    },
}


def _load(relative: str) -> Any:
    """A module of this repository by path (the converter tests' tokenizer builders, the
    backend build script), under a name of its own."""
    name = "fim_e2e_" + relative.replace("/", "_").removesuffix(".py")
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[2] / relative
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def _binary() -> Path:
    backend = _load("build/backend.py")
    version = backend.LLAMA_CPP_PYTHON.split("==")[1]
    return Path(backend.cache_dir()) / "llama-server" / version / "build" / "bin" / "llama-server"


@pytest.fixture(scope="module", params=["qwen2.5-coder", "codellama"])
def served(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    binary = _binary()
    if not binary.exists():
        pytest.skip(f"no llama-server at {binary} (bench/serving.py llama_server_binary())")
    tmp = tmp_path_factory.mktemp(request.param)
    build(tmp / "hf", request.param, _load("tests/convert/conftest.py"), seed=3)
    gguf_path = tmp / "coder.gguf"
    convert(tmp / "hf", gguf_path, outtype="f32")
    port = free_port()
    cmd = [str(binary), "-m", str(gguf_path), "--port", str(port), "-c", str(N_CTX)]
    cmd += ["-np", "1", "-b", "2048", "-n", str(N_PREDICT), "-t", str(THREADS), "--no-webui"]
    with (tmp / "llama-server.log").open("wb") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    worker = start_worker(
        tmp, "--model", str(gguf_path), "--ctx-size", str(N_CTX), "--parallel", "1",
        "--threads", str(THREADS), "--cache-ram", "0",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(url, server, tmp / "llama-server.log")
        yield {"llama_server": url, "worker": worker.url, "gguf": gguf_path}
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


def _assembled(gguf_path: Path, body: dict[str, Any]) -> tuple[list[int], str]:
    """worker/fim.py's sequence for `body` with the GGUF's own tokenizer, and its text with
    special tokens spelled out (as llama-server's answer shows its prompt)."""
    import llama_cpp as ll

    with llamacpp.load_model(gguf_path, vocab_only=True) as model:
        words = llamacpp.vocab(model)
        v = words.pointer

        def known(token: int) -> int | None:
            return None if token == ll.LLAMA_TOKEN_NULL else int(token)

        tokens = FimTokens(
            pre=known(ll.llama_vocab_fim_pre(v)),
            suf=known(ll.llama_vocab_fim_suf(v)),
            mid=known(ll.llama_vocab_fim_mid(v)),
            rep=known(ll.llama_vocab_fim_rep(v)),
            sep=known(ll.llama_vocab_fim_sep(v)),
            bos=known(ll.llama_vocab_bos(v)) if ll.llama_vocab_get_add_bos(v) else None,
        )

        async def tokenize(text: str, parse_special: bool) -> list[int]:
            return words.tokenize(text, False, parse_special)

        text = fim.InfillText(
            body["input_prefix"],
            body["input_suffix"],
            body.get("prompt", ""),
            tuple((c.get("filename", "tmp"), c["text"]) for c in body.get("input_extra", [])),
        )
        parts = asyncio.run(fim.tokenize(text, tokenize))
        infill = fim.assemble(
            tokens, parts, n_batch=fim.fim_batch(N_CTX), n_predict=N_PREDICT, n_ctx=N_CTX
        )
        spelled = words.detokenize(infill.tokens, unparse_special=True)
    return infill.tokens, spelled


@pytest.mark.parametrize("case", sorted(CASES))
def test_prompt_and_greedy_middle_equal_llama_servers(served: dict[str, Any], case: str) -> None:
    body = {**CASES[case], "n_predict": N_PREDICT, "temperature": 0.0, "return_tokens": True}
    theirs = httpx.post(f"{served['llama_server']}/infill", json=body, timeout=300)
    assert theirs.status_code == 200, theirs.text
    ours = httpx.post(f"{served['worker']}/infill", json=body, timeout=300)
    assert ours.status_code == 200, ours.text
    theirs_json, ours_json = theirs.json(), ours.json()

    tokens, spelled = _assembled(served["gguf"], body)
    assert theirs_json["tokens_evaluated"] == len(tokens) == ours_json["tokens_evaluated"]
    assert theirs_json["prompt"] == spelled
    # The generated ids, not only the text: a random tiny model may well pick tokens that
    # render as nothing (control tokens, partial UTF-8).
    assert ours_json["tokens"] == theirs_json["tokens"]
    assert len(theirs_json["tokens"]) == N_PREDICT == ours_json["tokens_predicted"]
    assert ours_json["content"] == theirs_json["content"]
    if case == "trimmed":
        assert len(tokens) > 3000  # the extra context filled the room llama-server gives it


def test_streamed_middle_equals_the_whole_one(served: dict[str, Any]) -> None:
    body = {**CASES["plain"], "n_predict": N_PREDICT, "temperature": 0.0, "stream": True}
    with httpx.stream("POST", f"{served['worker']}/infill", json=body, timeout=300) as r:
        lines = [line for line in r.iter_lines() if line]
    events = [json.loads(line.removeprefix("data: ")) for line in lines]
    whole = httpx.post(
        f"{served['worker']}/infill", json={**body, "stream": False}, timeout=300
    ).json()
    assert "".join(e["content"] for e in events) == whole["content"]
    assert events[-1]["stop"] is True and all(e["stop"] is False for e in events[:-1])
