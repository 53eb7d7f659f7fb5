"""The converter's layering, read from the source: a family module imports only the modules the
families share, or the one family it is built on, and no module of the package (converter,
worker, detector, shared) imports, even lazily, a module that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONVERT = ROOT / "convert"
PACKAGE = "llorch.convert"
FAMILIES = f"{PACKAGE}.families"
# The modules every family may import: no family of their own.
SHARED = frozenset({"base", "rope", "moe", "sparse"})
# A family built on another (its hyperparameters, plan or checks): the one it may import.
EXTENDS = {
    "falcon_h1": "mamba2",  # Mamba-2's mixer beside attention
    "gemma4_audio": "gemma4_vision",  # the clippable linears' bounds, as the vision tower's
    "gemma_embedding": "gemma",  # EmbeddingGemma: Gemma 3's text model, bidirectional
    "granite": "llama",
    "ministral3": "llama",
    "pixtral_vision": "llama",  # the rotate-half to interleaved q/k permutation
    "qwen2vl": "qwen",  # Qwen2's decoder with M-RoPE sections
    "qwen2vl_vision": "qwen25vl_vision",  # the same tensors, split the same way
    "qwen3": "qwen",  # Qwen3-Reranker's rank head on the Qwen3 conversion
    "qwen3vl": "qwen2vl",  # Qwen2-VL's M-RoPE sections on Qwen3's decoder, deepstack
    "qwen3vlmoe": "qwen3vl",  # Qwen3-VL's decoder, experts in every layer
    "xlm_roberta": "bert",  # BERT's graph and checks, RoBERTa's positions
    "modern_bert": "bert",  # the sentence-transformers pooling keys
    "smollm3": "llama",
    "stablelm": "phi2",
}


def _modules(root: Path = CONVERT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module under `root` by its import name in `package` (a package by its folder's).
    `llorch/worker` and `llorch/convert` are links to the top-level folders: read there."""
    found = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if root.name == "llorch" and parts[0] in ("worker", "convert"):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((package, *parts))] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The converter modules `name` imports anywhere in its file (at the top, in functions,
    under TYPE_CHECKING): `from P import M` counts as M where M is a module, else as P."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in known else base)
    return {module for module in out if module in known and module != name}


def _graph(known: dict[str, Path] | None = None) -> dict[str, set[str]]:
    known = _modules() if known is None else known
    return {name: _imports(name, path, known) for name, path in known.items()}


def test_families_import_only_shared_modules_or_the_family_they_extend() -> None:
    graph = _graph()
    families = {name.removeprefix(FAMILIES + "."): deps for name, deps in graph.items()}
    families = {short: deps for short, deps in families.items() if "." not in short}
    assert families.keys() >= SHARED | set(EXTENDS) | set(EXTENDS.values())
    wrong = {}
    for short, deps in families.items():
        imported = {d.removeprefix(FAMILIES + ".") for d in deps if d.startswith(FAMILIES + ".")}
        allowed = SHARED - {short} if short in SHARED else SHARED | {EXTENDS.get(short)}
        if imported - allowed:
            wrong[short] = sorted(imported - allowed)
    assert not wrong, f"family modules importing other families: {wrong}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)) is not None:
            return found
    return None


def test_no_import_cycle_between_converter_modules() -> None:
    graph = _graph()
    assert len(graph) > 50  # every module was read
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_anywhere_in_the_package() -> None:
    known = {
        **_modules(ROOT / "llorch", "llorch"),
        **_modules(ROOT / "worker", "llorch.worker"),
        **_modules(),
    }
    graph = _graph(known)
    assert {"llorch.cli", "llorch.worker.server", "llorch.detector"} <= graph.keys()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
