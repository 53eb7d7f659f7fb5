"""--fit on the real default model (Gemma 3 270M), with the free memory it sees forced: it
keeps its cap when the memory holds it, lowers the context to what a smaller memory holds,
and refuses at start when not even 512 tokens a slot fit. Its estimate is compared with
llama.cpp's own (llama-fit-params, where built) and with the KV cache llama.cpp allocates.

Gemma 3 270M: 18 layers, of which 15 slide over a 512-token window (only 3 keep the whole
context), 1 KV head of 256 + 256 values (1 KiB a cell at F16), a 262,144-token vocabulary."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest
from llama_tools import tool
from support import THREADS

from llorch.convert import convert
from llorch.worker.backend import fit, llama, offload, system
from llorch.worker.backend.errors import OutOfMemoryError
from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import Device, FitOptions, LoadOptions, ModelInfo
from llorch.worker.settings import WorkerSettings
from tests.convert import parity_cases
from tests.convert.conftest import build_checkpoint

MiB = 1 << 20
GLOBAL_LAYERS, CELL = 3, 1024  # the layers that keep every cell; bytes of a cell at F16


def load(
    model_path: Path, monkeypatch, free: int | None, gpu_layers: int | str = 0, **fit_options
) -> ModelInfo:
    monkeypatch.setattr(fit, "free_host_bytes", lambda: free)
    backend = LlamaCppBackend()
    options = LoadOptions(
        parallel=4,
        threads=THREADS,
        n_gpu_layers=gpu_layers,  # type: ignore[arg-type]
        backend_sampling=False,
        fit=FitOptions(**fit_options),
    )
    try:
        return backend.load(model_path, options)
    finally:
        backend.close()


def test_the_cap_when_memory_holds_it(model_path, monkeypatch):
    info = load(model_path, monkeypatch, 64 << 30)  # the default cap: 4096 tokens
    chosen = info.fit
    assert chosen is not None and info.n_ctx == chosen.ctx_per_slot == 4096
    assert "fits" in chosen.reason and chosen.free_bytes == 64 << 30
    # The KV cache it priced is the one llama.cpp allocated: the sliding layers keep their
    # window and a batch (1,024 cells a slot), the others 4096.
    assert info.kv_cache is not None and chosen.kv_bytes == info.kv_cache.size_bytes
    assert chosen.kv_bytes == 4 * CELL * (GLOBAL_LAYERS * 4096 + 15 * 1024)
    parts = chosen.weights_bytes + chosen.kv_bytes + chosen.compute_bytes
    assert chosen.expected_bytes == parts
    assert chosen.weights_bytes > 0.9 * model_path.stat().st_size


def test_a_smaller_memory_gets_the_largest_context_it_holds(model_path, monkeypatch):
    free = 2200 * MiB
    info = load(model_path, monkeypatch, free, ctx_max=0)  # cap: the training context
    chosen = info.fit
    assert chosen is not None and info.n_ctx == chosen.ctx_per_slot
    assert 512 < chosen.ctx_per_slot < info.n_ctx_train == 32768
    assert chosen.ctx_per_slot % 256 == 0
    budget = free - chosen.target_bytes
    assert chosen.expected_bytes <= budget
    # 256 more tokens a slot (4 slots x 3 whole-context layers) would not have fit
    step = 256 * 4 * GLOBAL_LAYERS * CELL
    assert chosen.expected_bytes + step > budget
    assert "would need" in chosen.reason
    assert info.kv_cache is not None and chosen.kv_bytes == info.kv_cache.size_bytes


def test_nothing_fits_is_refused_at_start(model_path, monkeypatch):
    with pytest.raises(OutOfMemoryError) as refused:
        load(model_path, monkeypatch, 1200 * MiB)
    message = str(refused.value)
    assert "--fit: even 4 slots x 512 tokens need" in message
    assert "1.17 GiB is free" in message and "--fit-target" in message
    assert "--parallel" in message and "--ctx-size" in message
    assert refused.value.free_bytes == 1200 * MiB


def test_unknown_free_memory_keeps_the_cap(model_path, monkeypatch):
    chosen = load(model_path, monkeypatch, None, ctx_max=2048).fit
    assert chosen is not None and chosen.ctx_per_slot == 2048
    assert chosen.reason.startswith("free memory unknown")


def test_ctx_size_or_no_fit_turns_it_off_and_a_cpu_gets_auto_layers():
    assert WorkerSettings().fit_options == FitOptions(4096, 512, 1 << 30)
    assert WorkerSettings(fit_ctx_max=0, fit_target=256).fit_options == FitOptions(
        0, 512, 256 * MiB
    )
    assert WorkerSettings(ctx_size=4096).fit_options is None  # given, even at the default
    assert WorkerSettings(fit=False).fit_options is None
    assert WorkerSettings().gpu_layers == "auto"  # llama-server's default with --fit
    assert WorkerSettings(n_gpu_layers=-1).gpu_layers == -1
    assert WorkerSettings(ctx_size=2048).gpu_layers == -1


def test_the_estimate_and_choice_agree_with_llama_fit_params(model_path, monkeypatch):
    """llama.cpp's fit on the same model, 4 non-unified slots, its context from the training
    context down: it projects the host memory the model takes (weights, KV, compute), and
    with a --fit-target that leaves 1,100 MiB of the host's total it lowers the context."""
    binary = tool("llama-fit-params")
    base = [str(binary), "-m", str(model_path), "-np", "4", "-c", "0", "-t", str(THREADS), "-v"]
    said = subprocess.run(base, capture_output=True, text=True, timeout=120, check=True)
    projected = re.search(
        r"projected to use (\d+) MiB of host memory vs\. (\d+) MiB of total", said.stderr
    )
    assert projected, said.stderr[-2000:]
    theirs, total = int(projected[1]) * MiB, int(projected[2]) * MiB
    ours = load(model_path, monkeypatch, 64 << 30, ctx_max=0).fit
    assert ours is not None and ours.ctx_per_slot == 32768
    # within 2 %: llama.cpp leaves out the weights it repacks (12 MiB) and the logits
    # output buffer (4 MiB), which this counts
    assert ours.expected_bytes == pytest.approx(theirs, rel=0.02)
    assert ours.expected_bytes >= theirs

    target = total - 1100 * MiB
    reduce = [*base, "--fit-target", str(target // MiB), "--fit-ctx", "512"]
    said = subprocess.run(reduce, capture_output=True, text=True, timeout=120, check=True)
    found = re.search(r"-c (\d+)", said.stdout)
    assert found, said.stdout + said.stderr[-2000:]
    their_ctx = int(found[1]) // 4  # per slot
    ours = load(model_path, monkeypatch, total, ctx_max=0, target_bytes=target).fit
    assert ours is not None and their_ctx < 32768
    # the same choice within 10 %, never more than llama.cpp's (this counts 16 MiB more)
    assert 0.9 * their_ctx <= ours.ctx_per_slot <= their_ctx


@pytest.mark.e2e
def test_a_worker_without_ctx_size_fits_each_model_and_health_says_so(model_path, tmp_path):
    from support import start_worker

    worker = start_worker(
        tmp_path,
        *("--model", f"a={model_path}", "--model", f"b={model_path}"),
        *("--cache-type-k", "b=q8_0", "--threads", str(THREADS), "--parallel", "2"),
    )
    try:
        body = httpx.get(f"{worker.url}/health").json()
    finally:
        worker.stop()
    model, fits = body["model"], body["fit"]
    assert set(fits) == {"a", "b"} and model["fit"] == fits["a"]  # the default: the first
    for chosen in fits.values():
        assert chosen["ctx_per_slot"] == 4096  # the cap, on this machine
        assert chosen["parallel"] == 2 and chosen["device"] == "host"
        assert chosen["free_bytes"] > chosen["expected_bytes"] > 0
    assert fits["a"]["kv_bytes"] == model["kv_cache"]["size_bytes"]
    assert fits["b"]["kv_bytes"] < fits["a"]["kv_bytes"]  # its keys are Q8_0
    assert worker.output().count("--fit: 2 slots x 4096 tokens") == 2


def fake_gpu(monkeypatch, free: int) -> None:
    """A GPU with `free` bytes free beside the CPU: llama.cpp still computes on the CPU (this
    build has no GPU backend), but the worker sizes and places as it would on one."""
    gpu = Device("CUDA0", "a GPU for the test", "gpu", 80 << 30, free)
    monkeypatch.setattr(llama, "_gpu_offload", lambda: True)
    monkeypatch.setattr(system, "devices", lambda: (Device("CPU", "cpu", "cpu"), gpu))


def test_on_a_gpu_every_layer_and_the_context_that_fits_there(model_path, monkeypatch):
    fake_gpu(monkeypatch, 2200 * MiB)
    info = load(model_path, monkeypatch, None, gpu_layers="auto", ctx_max=0)
    chosen = info.fit
    assert chosen is not None and chosen.device == "gpu" and info.n_gpu_layers == -1
    assert chosen.free_bytes == 2200 * MiB  # the GPU's, not the host's (None here)
    assert 512 < chosen.ctx_per_slot == info.n_ctx < 32768
    assert chosen.expected_bytes <= chosen.free_bytes - chosen.target_bytes
    # sized from a load that allocated nothing (no_alloc), priced as the real one allocates
    assert info.kv_cache is not None and chosen.kv_bytes == info.kv_cache.size_bytes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    case = parity_cases.CASES["qwen3moe"]
    folder = tmp_path_factory.mktemp("tiny")
    built = build_checkpoint(
        folder / "hf", case.model_cls, case.config_cls, case.config, tokenizer="gpt2"
    )
    convert(built.folder, folder / "m.gguf", outtype="f32")
    return folder / "m.gguf"


def test_on_a_gpu_where_the_floor_does_not_fit_fewer_layers(tiny, monkeypatch):
    header = offload.footprint(tiny)
    floor = min(512, header.n_ctx_train)
    # room for the compute buffers and one layer's weights and cache at the floor, no more
    layer = header.layer_bytes[0] + round(header.kv_bytes_per_token() * floor * 4)
    free = offload.compute_bytes(header, 4) + layer + 1
    fake_gpu(monkeypatch, free)
    info = load(tiny, monkeypatch, None, gpu_layers="auto", target_bytes=0)
    chosen = info.fit
    assert chosen is not None and info.n_gpu_layers == 1 and chosen.ctx_per_slot == floor
    assert chosen.reason.startswith(f"not even {floor} tokens a slot fit")
    assert chosen.device == "gpu" and chosen.expected_bytes <= free


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["qwen35-hybrid", "falcon-h1-0.5b", "mamba2"])
def test_recurrent_layers_are_priced_as_their_state(case_id, tmp_path, monkeypatch):
    """Qwen 3.5's recurrent layers (3 of every 4) and Mamba-2's hold a fixed state per slot,
    not a KV cache; Falcon-H1's layers have both. The fit prices exactly the memory llama.cpp
    then allocates for them (its load lines: the KV cache and the recurrent states)."""
    case = parity_cases.CASES[case_id]
    built = build_checkpoint(
        tmp_path / "hf", case.model_cls, case.config_cls, case.config, tokenizer="gpt2"
    )
    path = tmp_path / "m.gguf"
    convert(built.folder, path, outtype="f32")
    info = load(path, monkeypatch, 64 << 30, ctx_max=0)
    assert info.fit is not None and info.kv_cache is not None
    assert info.fit.kv_bytes == pytest.approx(info.kv_cache.size_bytes, abs=0.01 * MiB)
    every_layer = offload.context_bytes(offload.footprint(path), info.fit.ctx_per_slot, 4)
    if case_id == "qwen35-hybrid":  # the header's bound prices every layer as attention
        assert info.fit.kv_bytes < every_layer
    else:  # Falcon-H1: every layer attends and has a state; Mamba-2: no KV heads, a state
        assert info.fit.kv_bytes > every_layer
