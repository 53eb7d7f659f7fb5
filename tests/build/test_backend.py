"""build/backend.py: a preset whose variables change is rebuilt, not reused."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "build" / "backend.py"


@pytest.fixture(scope="module")
def backend() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llorch_build_backend", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", ["cpu", "cuda"])
def test_the_cpu_and_cuda_presets_build_the_rpc_backend(backend, preset):
    assert "-DGGML_RPC=ON" in backend.cmake_args(preset)


def test_a_changed_preset_gets_another_wheel_key(backend):
    args = backend.cmake_args("cpu")
    without_rpc = [a for a in args if a != "-DGGML_RPC=ON"]
    assert backend.wheel_key("cpu", args, sys.executable) != backend.wheel_key(
        "cpu", without_rpc, sys.executable
    )


def test_an_installed_build_older_than_its_preset_is_outdated(backend):
    args = backend.cmake_args("cpu")
    old = {"preset": "cpu", "cmake_args": [a for a in args if a != "-DGGML_RPC=ON"]}
    assert backend.outdated_arguments(old) == ["-DGGML_RPC=ON"]
    # Arguments the build adds on top of the preset's (CUDA toolkit root, ...) do not count.
    current = {"preset": "cpu", "cmake_args": [*args, "-DCUDAToolkit_ROOT=/x"]}
    assert backend.outdated_arguments(current) == []
    assert backend.outdated_arguments({"preset": "gone", "cmake_args": []}) == []
