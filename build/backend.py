"""Compile llama.cpp (through llama-cpp-python) for one preset of CMakePresets.json.

Usage: python build/backend.py --preset cpu [--python .venv/bin/python] [--force]

The preset's cache variables become llama-cpp-python's CMAKE_ARGS. The built wheel is kept in
a folder outside the repository, keyed by the preset's resolved arguments, so a second run (or a
fresh clone on the same machine) installs it in seconds instead of recompiling. Standard library
only: this runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
REPO_ROOT = Path(__file__).resolve().parent.parent
PRESETS_FILE = REPO_ROOT / "CMakePresets.json"
# Written into the venv so `llorch info` can say which preset the installed library came from.
MARKER_NAME = "llorch-backend.json"


class PresetError(Exception):
    pass


def resolve_cache_variables(name: str, presets: dict[str, dict]) -> dict[str, str]:
    """Cache variables of `name` after applying `inherits` (parents first, child wins)."""
    if name not in presets:
        visible = sorted(n for n, p in presets.items() if not p.get("hidden"))
        raise PresetError(f"unknown preset {name!r}; valid presets: {', '.join(visible)}")
    preset = presets[name]
    parents = preset.get("inherits", [])
    if isinstance(parents, str):
        parents = [parents]
    merged: dict[str, str] = {}
    # CMake gives the first listed parent precedence, so apply them last-to-first.
    for parent in reversed(parents):
        merged.update(resolve_cache_variables(parent, presets))
    for key, value in preset.get("cacheVariables", {}).items():
        merged[key] = value["value"] if isinstance(value, dict) else str(value)
    return merged


def cmake_args(preset: str) -> list[str]:
    data = json.loads(PRESETS_FILE.read_text())
    presets = {p["name"]: p for p in data["configurePresets"]}
    variables = resolve_cache_variables(preset, presets)
    if presets[preset].get("hidden"):
        raise PresetError(f"preset {preset!r} is hidden and cannot be built on its own")
    return [f"-D{k}={v}" for k, v in sorted(variables.items())]


def cublas_from_wheel(python: str) -> list[str]:
    code = (
        "import importlib.util, pathlib;"
        "spec = importlib.util.find_spec('nvidia.cublas');"
        "print(pathlib.Path(list(spec.submodule_search_locations)[0]) if spec else '')"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    root = out.stdout.strip()
    if not root:
        return []
    lib = Path(root) / "lib"
    include = Path(root) / "include"
    # The wheel ships libcublas.so.N only; the linker wants the unversioned name.
    for versioned in lib.glob("libcublas*.so.*"):
        plain = lib / (versioned.name.split(".so")[0] + ".so")
        if not plain.exists():
            plain.symlink_to(versioned.name)
    return [
        f"-DCUDA_cublas_LIBRARY={lib / 'libcublas.so'}",
        f"-DCUDA_cublasLt_LIBRARY={lib / 'libcublasLt.so'}",
        f"-DCMAKE_CUDA_FLAGS=-I{include}",
        f"-DCMAKE_CXX_FLAGS=-I{include}",
        f"-DCMAKE_SHARED_LINKER_FLAGS=-L{lib} -Wl,-rpath,{lib}",
    ]


def cache_dir() -> Path:
    base = os.environ.get("LLORCH_BUILD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "llorch"
    )
    return Path(base)


def wheel_key(preset: str, args: list[str], python: str) -> str:
    tag = subprocess.run(
        [python, "-c", "import sys; print(sys.implementation.cache_tag)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    blob = json.dumps([LLAMA_CPP_PYTHON, preset, args, tag, platform.machine()])
    return f"{preset}-{tag}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def build(preset: str, python: str, force: bool) -> Path:
    args = cmake_args(preset)
    if preset == "cuda":
        args += cublas_from_wheel(python)
    key = wheel_key(preset, args, python)
    wheel_dir = cache_dir() / "wheels" / key
    wheels = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
    if wheels and not force:
        print(f"[backend] reusing {wheels[-1]}", flush=True)
    else:
        print(f"[backend] compiling llama.cpp for preset {preset!r}: {' '.join(args)}", flush=True)
        started = time.monotonic()
        env = dict(os.environ, CMAKE_ARGS=" ".join(args), FORCE_CMAKE="1")
        staging = Path(tempfile.mkdtemp(prefix="llorch-wheel-"))
        # A pip cache per key: pip caches wheels built from an sdist by URL alone, so one shared
        # cache would hand the CPU build back when the CUDA one is asked for.
        pip_cache = cache_dir() / "pip" / key
        cmd = [python, "-m", "pip", "wheel", "--no-deps", "--no-binary", "llama-cpp-python"]
        cmd += ["--cache-dir", str(pip_cache), "-w", str(staging), LLAMA_CPP_PYTHON]
        subprocess.run(cmd, env=env, check=True)
        wheel_dir.mkdir(parents=True, exist_ok=True)
        for built in staging.glob("llama_cpp_python-*.whl"):
            shutil.move(str(built), wheel_dir / built.name)
        shutil.rmtree(staging, ignore_errors=True)
        wheels = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
        if not wheels:
            raise SystemExit(f"[backend] pip produced no wheel for preset {preset!r}")
        print(f"[backend] built in {time.monotonic() - started:.0f}s: {wheels[-1]}", flush=True)
    subprocess.run(
        [python, "-m", "pip", "install", "--force-reinstall", "--no-deps", str(wheels[-1])],
        check=True,
    )
    return wheels[-1]


def write_marker(python: str, preset: str, wheel: Path) -> None:
    prefix = subprocess.run(
        [python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    marker = {"preset": preset, "cmake_args": cmake_args(preset), "wheel": wheel.name}
    tmp = Path(prefix) / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    tmp.replace(Path(prefix) / MARKER_NAME)


def installed_preset(python: str) -> str | None:
    prefix = subprocess.run(
        [python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    marker = Path(prefix) / MARKER_NAME
    if not marker.exists():
        return None
    return json.loads(marker.read_text()).get("preset")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", help="configure preset of CMakePresets.json")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the target venv")
    parser.add_argument("--force", action="store_true", help="recompile even if a wheel is kept")
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing when the venv already has llama.cpp from any preset (set-up keeps "
        "a backend chosen earlier with `make backend PRESET=...`)",
    )
    ns = parser.parse_args()
    try:
        current = installed_preset(ns.python)
        if ns.if_missing and current is not None and not ns.force:
            print(f"[backend] llama.cpp for preset {current!r} already installed", flush=True)
            return
        wheel = build(ns.preset, ns.python, ns.force)
    except PresetError as exc:
        raise SystemExit(f"[backend] {exc}") from None
    write_marker(ns.python, ns.preset, wheel)


if __name__ == "__main__":
    main()
