"""Compile llama.cpp (through llama-cpp-python) for one preset of CMakePresets.json.

Usage: python build/backend.py --preset cpu [--python .venv/bin/python] [--force]
       python build/backend.py --preset cuda --configure-only

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
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
REPO_ROOT = Path(__file__).resolve().parent.parent
PRESETS_FILE = REPO_ROOT / "CMakePresets.json"
# Written into the venv so `llorch info` can say which preset the installed library came from.
MARKER_NAME = "llorch-backend.json"
CUDA_ROOT_VARS = ("CUDAToolkit_ROOT", "CUDA_HOME", "CUDA_PATH")


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


def preset_variables(preset: str) -> dict[str, str]:
    data = json.loads(PRESETS_FILE.read_text())
    presets = {p["name"]: p for p in data["configurePresets"]}
    variables = resolve_cache_variables(preset, presets)
    if presets[preset].get("hidden"):
        raise PresetError(f"preset {preset!r} is hidden and cannot be built on its own")
    if is_on(variables.get("GGML_CUDA", "")):
        override = os.environ.get("LLORCH_CUDA_ARCHITECTURES", "").strip()
        if override:
            # Commas and spaces are accepted for convenience; CMake lists use semicolons.
            archs = [a for a in override.replace(",", ";").replace(" ", ";").split(";") if a]
            variables["CMAKE_CUDA_ARCHITECTURES"] = ";".join(archs)
    return variables


def cmake_args(preset: str) -> list[str]:
    return [f"-D{k}={v}" for k, v in sorted(preset_variables(preset).items())]


def is_on(value: str) -> bool:
    return value.strip().upper() in {"ON", "1", "TRUE", "YES", "Y"}


# --- CUDA -----------------------------------------------------------------------------------
# llama.cpp's CUDA backend needs nvcc, the CUDA runtime and cuBLAS. A machine can have nvcc but
# no cuBLAS (a compiler-only toolkit) and no driver library (no GPU). cuBLAS then comes from the
# nvidia-cublas wheel on PyPI, merged with the system toolkit into one toolkit root that CMake's
# FindCUDAToolkit accepts; without libcuda.so, ggml is built without virtual memory management,
# which is the only thing it links the driver library for.


def system_cuda_root() -> Path | None:
    """The installed CUDA toolkit, found from the first nvcc of $CUDAToolkit_ROOT, $CUDA_HOME,
    $CUDA_PATH, PATH and /usr/local/cuda. The root is what nvcc itself reports (TOP), so a
    wrapper script named nvcc on PATH leads to the real toolkit, as it does for CMake."""
    candidates = [Path(os.environ[v]) / "bin" / "nvcc" for v in CUDA_ROOT_VARS if os.environ.get(v)]
    candidates += [Path(p) for p in [shutil.which("nvcc")] if p]
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    nvcc = next((c for c in candidates if c.is_file()), None)
    if nvcc is None:
        return None
    probe = subprocess.run(
        [str(nvcc), "-v", "__llorch_probe"], capture_output=True, text=True, check=False
    )
    match = re.search(r"^#\$ TOP=(.*)$", probe.stdout + probe.stderr, re.MULTILINE)
    root = Path(match.group(1).strip()) if match else nvcc.parent.parent
    return root.resolve() if (root / "bin" / "nvcc").is_file() else None


def cuda_lib_dirs(root: Path) -> list[Path]:
    dirs = [root / "lib64", root / "lib"]
    dirs += sorted((root / "targets").glob("*/lib"))
    return [d for d in dirs if d.is_dir()]


def has_library(dirs: list[Path], name: str) -> bool:
    return any((d / name).exists() or (d / "stubs" / name).exists() for d in dirs)


def linkable(root: Path, name: str) -> bool:
    """Whether the linker can find `name` in the toolkit (stubs/ included) or the system."""
    system = [
        Path(p) for p in ("/usr/lib64", "/usr/lib", f"/usr/lib/{platform.machine()}-linux-gnu")
    ]
    return has_library(cuda_lib_dirs(root) + system, name)


def cuda_major(root: Path) -> int:
    out = subprocess.run(
        [str(root / "bin" / "nvcc"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"release (\d+)\.", out)
    if not match:
        raise PresetError(f"cannot read the CUDA version from {root / 'bin' / 'nvcc'} --version")
    return int(match.group(1))


def link_entries(
    source: Path, dest: Path, except_names: frozenset[str] | set[str] = frozenset()
) -> None:
    """Link every entry of `source` into `dest` (entries already there win)."""
    for entry in sorted(source.iterdir()):
        link = dest / entry.name
        if entry.name in except_names:
            continue
        if not link.exists() and not link.is_symlink():
            link.symlink_to(entry.resolve())


def cublas_wheel(python: str, major: int) -> Path:
    """The nvidia-cublas wheel for CUDA `major`, extracted under the cache (downloaded once).
    Returns the folder holding its include/ and lib/."""
    package = "nvidia-cublas" if major >= 13 else f"nvidia-cublas-cu{major}"
    base = cache_dir() / "cuda"
    download = base / "download"
    pattern = package.replace("-", "_") + "-*.whl"
    found = sorted(download.glob(pattern))
    if not found:
        print(
            f"[backend] no cuBLAS in the CUDA toolkit; downloading {package} from PyPI", flush=True
        )
        download.mkdir(parents=True, exist_ok=True)
        cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        subprocess.run([*cmd, "-d", str(download), f"{package}=={major}.*"], check=True)
        found = sorted(download.glob(pattern))
        if not found:
            raise PresetError(f"pip downloaded no {package} wheel into {download}")
    wheel = found[-1]
    extracted = base / wheel.name.removesuffix(".whl")
    if not (extracted / ".complete").exists():
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=base))
        staging.chmod(0o755)  # mkdtemp makes it private
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(staging)
        (staging / ".complete").touch()
        shutil.rmtree(extracted, ignore_errors=True)
        staging.rename(extracted)
    headers = sorted(extracted.glob("nvidia/*/include/cublas_v2.h"))
    if not headers:
        raise PresetError(f"{wheel.name} has no nvidia/*/include/cublas_v2.h")
    return headers[0].parent.parent


def merged_cuda_root(system: Path, cublas: Path) -> Path:
    """A toolkit root with the system toolkit's compiler and the wheel's cuBLAS: nvvm/ links to
    the system toolkit, bin/ holds nvcc and links to the other tools, include/ and lib64/ hold
    links to every file of both, targets/<arch>/{include,lib} point at those two."""
    blob = json.dumps([str(system), str(cublas), platform.machine()])
    root = cache_dir() / "cuda" / f"toolkit-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    if (root / ".complete").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".toolkit-", dir=root.parent))
    staging.chmod(0o755)  # mkdtemp makes it private
    (staging / "nvvm").symlink_to((system / "nvvm").resolve())
    # nvcc takes its toolkit root (TOP) from the real path of its own executable, so a link to
    # it would compile against the system include/ and its missing cublas_v2.h. bin/ therefore
    # holds a copy of nvcc (a hard link where possible) and links to everything else.
    bin_dir = staging / "bin"
    bin_dir.mkdir()
    link_entries(system / "bin", bin_dir, except_names={"nvcc"})
    try:
        os.link((system / "bin" / "nvcc").resolve(), bin_dir / "nvcc")
    except OSError:
        shutil.copy2((system / "bin" / "nvcc").resolve(), bin_dir / "nvcc")
    include, lib = staging / "include", staging / "lib64"
    include.mkdir()
    lib.mkdir()
    link_entries(system / "include", include)
    link_entries(cublas / "include", include)
    for libdir in cuda_lib_dirs(system):
        link_entries(libdir, lib)
    link_entries(cublas / "lib", lib)
    # The wheel ships libcublas.so.N only; the linker and FindCUDAToolkit want the plain names.
    for versioned in sorted(lib.glob("lib*.so.*")):
        plain = lib / (versioned.name.split(".so.")[0] + ".so")
        if not plain.exists() and not plain.is_symlink():
            plain.symlink_to(versioned.name)
    targets = sorted(p.name for p in (system / "targets").glob("*") if p.is_dir())
    for target in targets or [f"{platform.machine()}-linux"]:
        tdir = staging / "targets" / target
        tdir.mkdir(parents=True)
        (tdir / "include").symlink_to("../../include")
        (tdir / "lib").symlink_to("../../lib64")
    (staging / ".complete").touch()
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return root


def build_config(preset: str, python: str) -> tuple[list[str], dict[str, str]]:
    """CMake arguments and extra environment for `preset` on this machine."""
    variables = preset_variables(preset)
    args = [f"-D{k}={v}" for k, v in sorted(variables.items())]
    env: dict[str, str] = {}
    if not is_on(variables.get("GGML_CUDA", "")):
        return args, env
    system = system_cuda_root()
    if system is None:
        raise PresetError(
            "preset needs nvcc (the CUDA toolkit); none found on PATH or in /usr/local/cuda"
        )
    root = system
    if not linkable(system, "libcublas.so"):
        root = merged_cuda_root(system, cublas_wheel(python, cuda_major(system)))
        print(f"[backend] CUDA toolkit with cuBLAS from PyPI: {root}", flush=True)
    if not linkable(system, "libcuda.so"):  # the driver, or the toolkit's stub of it
        print(
            "[backend] no libcuda.so: building without CUDA virtual memory management", flush=True
        )
        args.append("-DGGML_CUDA_NO_VMM=ON")
    args.append(f"-DCUDAToolkit_ROOT={root}")
    env["CUDACXX"] = str(root / "bin" / "nvcc")
    return args, env


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


def cmake_args_env(args: list[str]) -> str:
    """`args` as one CMAKE_ARGS string. Recent scikit-build-core splits it with shlex, older
    releases on spaces; quoting only the arguments that hold whitespace suits both."""
    return " ".join(shlex.quote(a) if any(c.isspace() for c in a) else a for a in args)


def build(preset: str, python: str, force: bool) -> tuple[Path, list[str]]:
    args, extra_env = build_config(preset, python)
    key = wheel_key(preset, args, python)
    wheel_dir = cache_dir() / "wheels" / key
    wheels = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
    if wheels and not force:
        print(f"[backend] reusing {wheels[-1]}", flush=True)
    else:
        print(
            f"[backend] compiling llama.cpp for preset {preset!r}: {shlex.join(args)}", flush=True
        )
        started = time.monotonic()
        env = dict(os.environ, CMAKE_ARGS=cmake_args_env(args), FORCE_CMAKE="1", **extra_env)
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
    return wheels[-1], args


def sdist_source(python: str) -> Path:
    """The llama-cpp-python sdist, downloaded and extracted under the cache once."""
    base = cache_dir() / "src"
    name, version = LLAMA_CPP_PYTHON.split("==")
    stem = f"{name.replace('-', '_')}-{version}"
    source = base / stem
    if (source / ".complete").exists():
        return source
    base.mkdir(parents=True, exist_ok=True)
    archives = sorted(base.glob(f"{stem}.tar.gz"))
    if not archives:
        cmd = [python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, "-d", str(base), LLAMA_CPP_PYTHON], check=True)
        archives = sorted(base.glob(f"{stem}.tar.gz"))
        if not archives:
            raise PresetError(f"pip downloaded no {stem}.tar.gz into {base}")
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=base))
    with tarfile.open(archives[0]) as archive:
        archive.extractall(staging, filter="data")
    (staging / stem / ".complete").touch()
    shutil.rmtree(source, ignore_errors=True)
    (staging / stem).rename(source)
    shutil.rmtree(staging, ignore_errors=True)
    return source


def configure_only(preset: str, python: str) -> Path:
    """Run only CMake's configure step, with the arguments and environment a build would use,
    on the sdist's sources (the project pip builds: llama-cpp-python's CMakeLists.txt, which
    adds vendor/llama.cpp). Checks the tool chain in a minute instead of a full compile."""
    args, extra_env = build_config(preset, python)
    source = sdist_source(python)
    binary = cache_dir() / "configure" / preset
    shutil.rmtree(binary, ignore_errors=True)
    binary.mkdir(parents=True)
    cmd = ["cmake", "-S", str(source), "-B", str(binary)]
    if shutil.which("ninja"):
        cmd += ["-G", "Ninja"]  # what scikit-build-core uses when ninja is there
    cmd += [f"-DSKBUILD_PLATLIB_DIR={binary / 'platlib'}", *args]
    print(f"[backend] configuring {source} for preset {preset!r}", flush=True)
    for key, value in extra_env.items():
        print(f"[backend]   env {key}={value}", flush=True)
    print(f"[backend]   {shlex.join(cmd)}", flush=True)
    subprocess.run(cmd, env=dict(os.environ, **extra_env), check=True)
    cache = binary / "CMakeCache.txt"
    wanted = ("CMAKE_CUDA_COMPILER:", "CMAKE_CUDA_ARCHITECTURES:", "CUDAToolkit_", "CUDA_cublas")
    for line in cache.read_text().splitlines():
        if line.startswith(wanted):
            print(f"[backend]   cache {line}", flush=True)
    if any(a.startswith("-DGGML_CUDA=") and is_on(a.split("=", 1)[1]) for a in args):
        if not list(binary.rglob("ggml-cuda.dir")):
            raise PresetError("configure succeeded but generated no ggml-cuda target")
        print("[backend] ggml-cuda target generated", flush=True)
        if (binary / "build.ninja").exists():
            preprocess_cuda_source(binary, dict(os.environ, **extra_env))
    print(f"[backend] configure of preset {preset!r} succeeded: {binary}", flush=True)
    return binary


def preprocess_cuda_source(binary: Path, env: dict[str, str]) -> None:
    """Run the preprocessor on one ggml-cuda source with its exact compile command: proves
    that nvcc resolves the headers (cublas_v2.h among them), which configuring alone does not."""
    obj = "vendor/llama.cpp/ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/acc.cu.o"
    listed = subprocess.run(
        ["ninja", "-C", str(binary), "-t", "commands", obj],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    words = shlex.split(listed.strip().splitlines()[-1])
    out = binary / "acc.cu.i"
    cmd: list[str] = []
    skip = 0
    for word in words:
        if skip:
            skip -= 1
        elif word in ("-MT", "-MF", "-o"):
            skip = 1
        elif word != "-MD" and not word.startswith("--generate-code"):
            cmd.append("-E" if word == "-c" else word)
    subprocess.run([*cmd, "-o", str(out)], cwd=binary, env=env, check=True)
    lines = out.read_text().splitlines()
    cublas = [line for line in lines if line.startswith("# ") and 'cublas_v2.h"' in line]
    if not cublas:
        raise PresetError(f"{obj}: preprocessing did not include cublas_v2.h")
    print(f"[backend] ggml-cuda source preprocessed; {cublas[0].split()[2]}", flush=True)


def write_marker(python: str, preset: str, wheel: Path, args: list[str]) -> None:
    prefix = subprocess.run(
        [python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    marker = {"preset": preset, "cmake_args": args, "wheel": wheel.name}
    tmp = Path(prefix) / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    tmp.replace(Path(prefix) / MARKER_NAME)


def installed_marker(python: str) -> dict | None:
    prefix = subprocess.run(
        [python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    marker = Path(prefix) / MARKER_NAME
    if not marker.exists():
        return None
    return json.loads(marker.read_text())


def outdated_arguments(marker: dict) -> list[str]:
    """The installed preset's current arguments that its installed build lacks: non-empty when
    CMakePresets.json changed since (e.g. a backend was added), so set-up rebuilds it."""
    preset = marker.get("preset")
    if not preset:
        return []
    try:
        wanted = cmake_args(preset)
    except (PresetError, KeyError):
        return []  # a preset no longer in the file: keep what is installed
    built = set(marker.get("cmake_args", []))
    return [a for a in wanted if a not in built]


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
    parser.add_argument(
        "--configure-only",
        action="store_true",
        help="only run CMake's configure step on the llama-cpp-python sources, with the "
        "arguments and environment of a real build; builds and installs nothing",
    )
    ns = parser.parse_args()
    try:
        if ns.configure_only:
            configure_only(ns.preset, ns.python)
            return
        marker = installed_marker(ns.python)
        current = marker.get("preset") if marker else None
        if ns.if_missing and marker is not None and current is not None and not ns.force:
            missing = outdated_arguments(marker)
            if not missing:
                print(f"[backend] llama.cpp for preset {current!r} already installed", flush=True)
                return
            # The installed build predates a change of its preset: rebuild that preset.
            print(
                f"[backend] preset {current!r} changed since it was built "
                f"({shlex.join(missing)} missing); rebuilding it",
                flush=True,
            )
            ns.preset = current
        wheel, args = build(ns.preset, ns.python, ns.force)
    except PresetError as exc:
        raise SystemExit(f"[backend] {exc}") from None
    except subprocess.CalledProcessError as exc:
        raise SystemExit(
            f"[backend] failed (exit {exc.returncode}): {shlex.join(exc.cmd)}"
        ) from None
    write_marker(ns.python, ns.preset, wheel, args)


if __name__ == "__main__":
    main()
