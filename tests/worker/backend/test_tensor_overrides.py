"""--override-tensor, --n-cpu-moe and --cpu-moe on a tiny Qwen3-MoE (2 layers of 4 experts),
built from a random transformers checkpoint and converted: llama.cpp's loader says it placed
the matching tensors where asked (its "buffer type overridden" lines), and greedy decoding
answers as without the overrides. On a CPU-only build every buffer is the CPU's already, so
these show that llama.cpp got the placement, not what it saves on a GPU."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import THREADS

from llorch import native_log
from llorch.cli import main
from llorch.convert import convert
from llorch.worker.backend import tensor_overrides
from llorch.worker.backend.errors import ModelLoadError
from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import (
    GenerationRequest,
    LoadOptions,
    SamplingParams,
    TokenEvent,
)
from llorch.worker.backend.single import generate
from llorch.worker.settings import WorkerSettings
from tests.convert import parity_cases
from tests.convert.conftest import build_checkpoint

OVERRIDDEN = re.compile(r"tensor (\S+) \(.*\) buffer type overridden to (\S+)")


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    case = parity_cases.CASES["qwen3moe"]
    folder = tmp_path_factory.mktemp("moe")
    built = build_checkpoint(
        folder / "hf", case.model_cls, case.config_cls, case.config, tokenizer="gpt2"
    )
    path = folder / "m.gguf"
    convert(built.folder, path, outtype="f32")
    yield path


def run(path: Path, overrides: tuple[tuple[str, str], ...]) -> tuple[list[int], dict[str, str]]:
    """Greedy tokens of a fixed prompt, and what llama.cpp's loader placed by override."""
    backend = LlamaCppBackend()
    with native_log.capture() as logged:
        backend.load(path, LoadOptions(ctx_size=256, threads=THREADS, tensor_overrides=overrides))
    try:
        request = GenerationRequest(tuple(range(5, 25)), 8, SamplingParams(temperature=0.0))
        events = generate(backend.decoder(), request)
        tokens = [e.token_id for e in events if isinstance(e, TokenEvent)]
    finally:
        backend.close()
    placed = dict(OVERRIDDEN.findall("".join(logged)))
    return tokens, placed


def test_overrides_reach_llama_cpp_and_answer_the_same(moe):
    plain, none = run(moe, ())
    assert none == {} and len(plain) == 8
    experts = {f"blk.{i}.ffn_{p}_exps.weight" for i in (0, 1) for p in ("gate", "up", "down")}

    tokens, placed = run(moe, tensor_overrides.parse("exps=CPU"))
    assert placed == dict.fromkeys(experts, "CPU") and tokens == plain

    tokens, placed = run(moe, tensor_overrides.cpu_moe(1))  # --n-cpu-moe 1
    assert placed == {k: "CPU" for k in experts if k.startswith("blk.0.")} and tokens == plain

    tokens, placed = run(moe, tensor_overrides.cpu_moe(None))  # --cpu-moe
    assert placed == dict.fromkeys(experts, "CPU") and tokens == plain


def test_an_unknown_buffer_type_is_refused_naming_the_valid_ones(moe):
    with pytest.raises(ModelLoadError) as refused:
        run(moe, (("exps", "CUDA7"),))
    assert "unknown buffer type CUDA7; this machine's are CPU" in str(refused.value)


def test_settings_build_the_patterns_per_model():
    settings = WorkerSettings(
        override_tensor=[r"blk\.0\.attn=CPU,moe=ffn_up=CPU", "token_embd=CPU"],
        n_cpu_moe="1,moe=2",
    )
    experts = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
    assert settings.tensor_overrides(None) == (
        (r"blk\.0\.attn", "CPU"),
        ("token_embd", "CPU"),
        (rf"blk\.0{experts}", "CPU"),
    )
    assert settings.tensor_overrides("moe") == (
        (r"blk\.0\.attn", "CPU"),
        ("ffn_up", "CPU"),
        ("token_embd", "CPU"),
        (rf"blk\.0{experts}", "CPU"),
        (rf"blk\.1{experts}", "CPU"),
    )
    # --cpu-moe: every layer's experts, one pattern (common.h's LLM_FFN_EXPS_REGEX)
    assert WorkerSettings(cpu_moe=True).tensor_overrides(None) == ((experts, "CPU"),)
    assert WorkerSettings().tensor_overrides(None) == ()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--override-tensor", "(exps=CPU"], "is not a regex"),
        (["--override-tensor", "exps"], "takes REGEX=BUFFER"),
        (["--n-cpu-moe", "moe=two"], "is not a number of layers"),
    ],
)
def test_bad_values_are_refused_at_start(argv, needle, capsys):
    assert main(["serve", *argv]) == 2
    assert needle in capsys.readouterr().err
