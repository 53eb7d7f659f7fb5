"""LoRA adapters served with the default model, against llama.cpp called directly with the
same adapter set on a context of its own. The adapter is a random one written here with
gguf-py (converting PEFT adapters is tested in tests/convert)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gguf
import llama_cpp as ll
import numpy as np
import pytest
from support import FRANCE, THREADS

from llorch.gguf_header import read_header
from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.lora import LoraAdapters
from llorch.worker.backend.protocol import (
    FinishEvent,
    GenerationRequest,
    LoadOptions,
    LoraSpec,
    SamplingParams,
    TokenEvent,
)

GREEDY = SamplingParams(temperature=0.0)
TOKENS = 8


def write_random_lora(path: Path, model_path: Path, rank: int = 4, seed: int = 0) -> None:
    """A LoRA on every attention output projection of the model, large enough to change
    what greedy decoding says."""
    # The header alone (gguf.GGUFReader would parse Gemma's 262k-token vocabulary: ~20 s).
    header = read_header(model_path)
    arch = header.fields["general.architecture"]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    rng = np.random.default_rng(seed)
    for tensor in header.tensors:
        if tensor.name.endswith("attn_output.weight"):
            n_in, n_out = (int(x) for x in tensor.shape[:2])  # ggml order: ne0 = input
            a = rng.standard_normal((rank, n_in)).astype(np.float32) * 0.5
            b = rng.standard_normal((n_out, rank)).astype(np.float32) * 0.5
            base = tensor.name.removesuffix(".weight")
            writer.add_tensor(f"{base}.weight.lora_a", a)
            writer.add_tensor(f"{base}.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def adapter(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lora") / "random.gguf"
    write_random_lora(path, model_path)
    return path


@pytest.fixture(scope="module")
def served(model_path: Path, adapter: Path) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend()
    spec = LoraSpec("random", adapter, 1.0)
    backend.load(model_path, LoadOptions(ctx_size=256, parallel=2, threads=THREADS, lora=(spec,)))
    yield backend
    backend.close()


def reference_tokens(backend: LlamaCppBackend, prompt: list[int], scale: float) -> list[int]:
    """Greedy tokens from llama.cpp directly, with the adapter at `scale` (0: none)."""
    params = ll.llama_context_default_params()
    params.n_ctx, params.n_threads, params.n_threads_batch = 256, THREADS, THREADS
    ctx = ll.llama_init_from_model(backend._model, params)
    adapters = LoraAdapters(backend._model, backend.info().lora)
    batch = ll.llama_batch_init(256, 0, 1)
    try:
        adapters.apply(ctx, (("random", scale),) if scale else ())
        n_vocab = backend.info().n_vocab
        out: list[int] = []
        tokens, pos = list(prompt), 0
        for _ in range(TOKENS):
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, i == len(tokens) - 1
            batch.n_tokens = len(tokens)
            assert ll.llama_decode(ctx, batch) == 0
            pos += len(tokens)
            logits = np.ctypeslib.as_array(
                ll.llama_get_logits_ith(ctx, len(tokens) - 1), shape=(n_vocab,)
            )
            tokens = [int(logits.argmax())]
            out += tokens
        return out
    finally:
        ll.llama_batch_free(batch)
        ll.llama_free(ctx)
        adapters.close()


def run_together(
    backend: LlamaCppBackend, requests: dict[str, GenerationRequest]
) -> dict[str, list[int]]:
    decoder = backend.decoder()
    for key, request in requests.items():
        decoder.add(key, request)
    out: dict[str, list[int]] = {key: [] for key in requests}
    done: set[str] = set()
    while len(done) < len(requests):
        for key, event in decoder.step():
            if isinstance(event, TokenEvent):
                out[key].append(event.token_id)
            else:
                assert isinstance(event, FinishEvent), event
                done.add(key)
    return out


@pytest.mark.slow
def test_requests_with_and_without_the_adapter_in_one_batch(served):
    prompt = served.tokenize(FRANCE)
    with_adapter = reference_tokens(served, prompt, 1.0)
    without = reference_tokens(served, prompt, 0.0)
    assert with_adapter != without  # the adapter changes what greedy decoding says
    got = run_together(
        served,
        {
            "on": GenerationRequest(tuple(prompt), TOKENS, GREEDY, lora=(("random", 1.0),)),
            "off": GenerationRequest(tuple(prompt), TOKENS, GREEDY, lora=()),
        },
    )
    assert got["on"] == with_adapter and got["off"] == without


def test_a_scale_is_a_scale(served):
    prompt = served.tokenize("Once upon a time")
    half = reference_tokens(served, prompt, 0.5)
    got = run_together(
        served, {"half": GenerationRequest(tuple(prompt), TOKENS, GREEDY, lora=(("random", 0.5),))}
    )
    assert got["half"] == half
