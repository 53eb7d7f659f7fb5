"""KV cache types (--cache-type-k / --cache-type-v) on the real default model: a Q8_0 cache
takes 17/32 of F16's memory and scores the same text as F16 does, within a stated tolerance;
combinations llama.cpp refuses are refused at start, naming the flags.

Tolerance, measured on Gemma 3 270M Q4_K_M with this text (47 scored positions): Q8_0 K and V
move a token's log-probability by 0.04 nats on average, 0.20 at most; a BF16 cache, which is
not quantized at all, moves them by 0.05 and 0.39 (a small model is that sensitive to its
cache's rounding). Greedy decoding keeps F16's first 13 tokens."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from support import THREADS

from llorch.cli import main
from llorch.worker.backend.errors import ModelLoadError
from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.offload import (
    COMPUTE_RESERVE_BYTES,
    ModelFootprint,
    fit_layers,
    kv_cache_bytes,
)
from llorch.worker.backend.protocol import (
    GenerationRequest,
    LoadOptions,
    PromptScores,
    SamplingParams,
    TokenEvent,
)
from llorch.worker.backend.single import generate
from llorch.worker.settings import WorkerSettings

TEXT = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg"
GREEDY = SamplingParams(temperature=0.0)
MEAN_NATS, MAX_NATS, SAME_GREEDY = 0.1, 0.5, 8


def load(model_path: Path, type_k: str, type_v: str) -> LlamaCppBackend:
    backend = LlamaCppBackend()
    options = LoadOptions(ctx_size=512, threads=THREADS, cache_type_k=type_k, cache_type_v=type_v)
    backend.load(model_path, options)
    return backend


def greedy(backend: LlamaCppBackend, prompt: tuple[int, ...]) -> list[int]:
    request = GenerationRequest(prompt, 16, GREEDY)
    return [e.token_id for e in generate(backend.decoder(), request) if isinstance(e, TokenEvent)]


def scores(backend: LlamaCppBackend, tokens: tuple[int, ...]) -> np.ndarray:
    """The log-probability of every token of `tokens` but the first, read as one prompt."""
    request = GenerationRequest(tokens, 0, GREEDY, logprobs=0, echo=True)
    events = [e for e in generate(backend.decoder(), request) if isinstance(e, PromptScores)]
    return np.array([s.token.logprob for s in events[0].tokens[1:]])


@pytest.fixture(scope="module")
def f16(model_path: Path) -> Iterator[LlamaCppBackend]:
    backend = load(model_path, "f16", "f16")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def q8(model_path: Path) -> Iterator[LlamaCppBackend]:
    backend = load(model_path, "q8_0", "q8_0")
    yield backend
    backend.close()


def test_q8_0_takes_17_32_of_f16s_memory_and_health_says_so(f16, q8):
    a, b = f16.info().kv_cache, q8.info().kv_cache
    assert a is not None and b is not None
    assert (a.type_k, a.type_v, b.type_k, b.type_v) == ("f16", "f16", "q8_0", "q8_0")
    # Q8_0: 34 bytes per 32 values (a block of 32 int8 and an f16 scale), F16: 64. The sizes
    # are llama.cpp's own, logged to 0.01 MiB per cache.
    assert b.size_bytes / a.size_bytes == pytest.approx(34 / 64, abs=0.002)
    # The F16 figure is what the model's shape gives for this context: every layer keeps a
    # K and a V row per cell.
    meta = f16.info().metadata
    per_cell = int(meta["gemma3.attention.head_count_kv"]) * (
        int(meta["gemma3.attention.key_length"]) + int(meta["gemma3.attention.value_length"])
    )
    expected = int(meta["gemma3.block_count"]) * 512 * per_cell * 2
    assert a.size_bytes == pytest.approx(expected, abs=0.01 * 2**20)
    assert a.bytes_per_token * 512 == pytest.approx(a.size_bytes)


@pytest.mark.slow
def test_q8_0_scores_and_decodes_like_f16_within_the_tolerance(f16, q8):
    prompt = tuple(f16.tokenize(TEXT))
    reference = greedy(f16, prompt)
    quantized = greedy(q8, prompt)
    assert quantized[:SAME_GREEDY] == reference[:SAME_GREEDY]
    text = prompt + tuple(reference)
    delta = np.abs(scores(q8, text) - scores(f16, text))
    assert delta.mean() <= MEAN_NATS and delta.max() <= MAX_NATS, delta
    # The cache really is another type: the same text does not score bit for bit the same.
    assert delta.max() > 0.0


def test_a_quantized_v_without_flash_attention_is_refused_at_load(model_path):
    backend = LlamaCppBackend()
    options = LoadOptions(ctx_size=256, threads=THREADS, cache_type_v="q8_0", flash_attn="off")
    with pytest.raises(ModelLoadError) as info:
        backend.load(model_path, options)
    message = str(info.value)
    assert "--cache-type-v q8_0 --flash-attn off" in message
    assert "quantized V cache requires flash_attn" in message  # llama.cpp's own words


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--cache-type-k", "q3_k"], "'q3_k' is not a KV cache type; valid: f16, bf16, q8_0"),
        (["--cache-type-v", "chat=f32"], "--cache-type-v 'chat=f32': 'f32' is not"),
        (
            ["--cache-type-v", "q4_0", "--flash-attn", "off"],
            "--cache-type-v q4_0 is quantized, which llama.cpp reads only with flash attention",
        ),
    ],
)
def test_bad_combinations_exit_2_naming_the_flag(argv, needle, capsys):
    assert main(["serve", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_types_per_model():
    settings = WorkerSettings(cache_type_k="q8_0,chat=f16", cache_type_v="chat=q4_0")
    assert settings.cache_types("chat") == ("f16", "q4_0")
    assert settings.cache_types("other") == ("q8_0", "f16")
    assert settings.cache_types(None) == ("q8_0", "f16")


def test_memory_checks_price_the_cache_types():
    # Two layers of 1 KV head of 256 (K) and 256 (V) values per cell: 2 KiB per cell at F16.
    model = ModelFootprint((100, 100), 10, 1024, 4096, 256, 256)
    assert kv_cache_bytes(model, 1000) == 2 * 1000 * 1024
    assert kv_cache_bytes(model, 1000, "q8_0", "q8_0") == 2 * 1000 * 512 * 34 // 32
    assert kv_cache_bytes(model, 1000, "q8_0", "f16") == 2 * 1000 * (256 * 34 // 32 + 512)
    # The GPU fit: a cheaper cache leaves room for more layers.
    free = COMPUTE_RESERVE_BYTES + 2 * 100 + 2 * 1000 * 600
    assert fit_layers(model, free, 1000) == 1
    assert fit_layers(model, free, 1000, "q8_0", "q8_0") == 3  # both, and the output


@pytest.mark.e2e
def test_health_shows_the_types_and_size(worker):
    model = httpx.get(f"{worker.url}/health").json()["model"]
    kv = model["kv_cache"]
    assert (kv["type_k"], kv["type_v"], kv["flash_attn"]) == ("f16", "f16", "auto")
    cells = model["n_ctx"] * 4  # the worker's 4 slots (--parallel's default)
    assert kv["size_bytes"] > 0 and kv["bytes_per_token"] == pytest.approx(kv["size_bytes"] / cells)


def test_llama_cpps_load_lines_come_at_their_own_levels(model_path, caplog):
    # What `serve --verbose` shows: llama.cpp's info lines (the cache's size and types) at
    # INFO, not hidden among its debug lines; without it, only its errors pass.
    assert logging.getLogger("llorch.llama_cpp").level == logging.ERROR
    caplog.set_level(logging.INFO, logger="llorch.llama_cpp")
    load(model_path, "q8_0", "q8_0").close()
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(m.startswith("llama_kv_cache: size =") and "K (q8_0)" in m for m in info), info
    assert not any(r.levelno == logging.DEBUG for r in caplog.records)
