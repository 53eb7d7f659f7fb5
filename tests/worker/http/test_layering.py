"""worker/http must never import llama_cpp: it talks to a ModelBackend, not to llama.cpp."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import llorch.worker.http

HTTP_DIR = Path(llorch.worker.http.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_module_of_worker_http_imports_llama_cpp():
    files = sorted(HTTP_DIR.rglob("*.py"))
    assert files, "worker/http has no modules?"
    offenders = {
        str(f.relative_to(HTTP_DIR)): sorted(
            n for n in imported_modules(f) if n.split(".")[0] == "llama_cpp"
        )
        for f in files
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_importing_the_app_loads_no_llama_cpp():
    code = (
        "import sys, llorch.worker.http.app;"
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'llama_cpp'];"
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_would_catch_an_import(tmp_path):
    offender = tmp_path / "bad.py"
    offender.write_text("from llama_cpp import llama_decode\nimport llama_cpp.llama_cpp as ll\n")
    assert {"llama_cpp", "llama_cpp.llama_cpp"} <= imported_modules(offender)


def constructed(path: Path) -> set[str]:
    """Names of the classes a module calls (constructs)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.id if isinstance(func, ast.Name) else getattr(func, "attr", ""))
    return names


def test_the_http_layer_builds_no_engine_scheduler_or_backend():
    # The composition root (worker/server.py) builds backend -> scheduler -> engine -> app;
    # the routes only translate.
    built = {
        str(f.relative_to(HTTP_DIR)): constructed(f) & {"Engine", "Scheduler", "LlamaCppBackend"}
        for f in sorted(HTTP_DIR.rglob("*.py"))
    }
    assert not {k: v for k, v in built.items() if v}
    server = HTTP_DIR.parent / "server.py"
    assert {"Engine", "Scheduler"} <= constructed(server)


def test_no_module_of_worker_http_imports_the_scheduler():
    # Surfaces talk to the engine and read the job types of worker/jobs.py; the thread that
    # runs the jobs stays behind the engine.
    offenders = {
        str(f.relative_to(HTTP_DIR)): sorted(
            n for n in imported_modules(f) if n.endswith("worker.scheduler") or n == "scheduler"
        )
        for f in sorted(HTTP_DIR.rglob("*.py"))
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_chat_core_loads_no_llama_cpp_when_imported():
    code = (
        "import sys, llorch.worker.chat.prompt, llorch.worker.chat.formats as f;"
        "[f.load(n) for n in f.FAMILIES];"
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'llama_cpp'];"
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
