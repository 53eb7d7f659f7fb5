"""convert_batch: plans from manifests and folders, naming, provenance, isolation, memory."""

from __future__ import annotations

import hashlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

import gguf
import pytest
from tiny_hf import hf_cache_repo, tiny_llama

from llorch.convert.batch import (
    ManifestError,
    SourceResolveError,
    convert_batch,
    load_manifest,
    plan_from_dirs,
)
from llorch.convert.batch import provenance as prov
from llorch.convert.batch.executor import LocalExecutor, Task
from llorch.convert.batch.memory import BASELINE, parse_size


@pytest.fixture(autouse=True)
def _own_digest_memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache" / "gguf"))


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    found = reader.get_field(key)
    return None if found is None else found.contents()


@pytest.mark.slow
def test_one_bad_source_of_four_is_its_own_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    tiny_llama(src / "good-a", seed=1)
    tiny_llama(src / "good-b", seed=2)
    truncated = tiny_llama(src / "truncated", seed=3) / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    unknown = tiny_llama(src / "unknown-arch", seed=4) / "config.json"
    config = json.loads(unknown.read_text())
    unknown.write_text(json.dumps({**config, "architectures": ["NoSuchForCausalLM"]}))

    events: list[dict[str, Any]] = []
    plan = plan_from_dirs([src], ["f16", "q8_0"])
    report = convert_batch(plan, tmp_path / "out", jobs=2, on_event=events.append)

    by_id = {j.id: j for j in report.jobs}
    assert not report.ok and sorted(j.id for j in report.failed) == ["truncated", "unknown-arch"]
    assert by_id["truncated"].error_type == "InvalidFileError", by_id["truncated"]
    assert "model.safetensors" in str(by_id["truncated"].error)
    assert by_id["unknown-arch"].error_type == "UnsupportedArchitectureError"
    assert "NoSuchForCausalLM" in str(by_id["unknown-arch"].error)
    for good in ("good-a", "good-b"):
        assert by_id[good].ok and [o["outtype"] for o in by_id[good].outputs] == ["f16", "q8_0"]
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".gguf")
    assert names == [f"good-{x}-60K-{t}.gguf" for x in "ab" for t in ("F16", "Q8_0")]
    assert [e["event"] for e in events][-1] == "batch_end"


def test_a_killed_job_is_recorded_and_the_others_go_on(tmp_path: Path) -> None:
    """What the OOM killer does to a job: SIGKILL. The executor runs stand-in jobs here."""
    script = (
        "import json, os, signal, sys\n"
        "spec = json.loads(sys.argv[1])\n"
        "if spec['id'] == 'doomed': os.kill(os.getpid(), signal.SIGKILL)\n"
        "print(json.dumps({'event': 'output', 'job': spec['id']}))\n"
    )
    executor = LocalExecutor(jobs=2, max_ram=1 << 40, command=[sys.executable, "-c", script])
    tasks = [Task(name, {"id": name}, 1) for name in ("first", "doomed", "last")]
    events: list[dict[str, Any]] = []
    outcomes = executor.run(tasks, events.append)
    assert outcomes["doomed"].returncode == -signal.SIGKILL
    assert "killed by SIGKILL" in str(outcomes["doomed"].error)
    assert outcomes["first"].error is None and outcomes["last"].error is None
    assert {e["job"] for e in events if e["event"] == "output"} == {"first", "last"}


@pytest.mark.slow
def test_a_job_that_would_overflow_max_ram_waits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3):
        tiny_llama(src / f"m{i}", seed=i)
    events: list[dict[str, Any]] = []
    budget = BASELINE + (BASELINE // 2)  # room for one tiny job at a time, not two
    report = convert_batch(
        plan_from_dirs([src], ["q8_0"]), tmp_path / "out", jobs=3, max_ram=budget,
        on_event=events.append,
    )  # fmt: skip
    assert report.ok
    running, most = 0, 0
    for e in events:
        running += {"job_start": 1, "job_end": -1}.get(e["event"], 0)
        most = max(most, running)
    assert most == 1
    assert {e["job"] for e in events if e["event"] == "waiting"} >= {"m1", "m2"}


def test_manifest_hf_source_naming_and_provenance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    commit = "c0ffee" + "0" * 34
    snapshot = hf_cache_repo(hub, "acme/tiny", tiny_llama(tmp_path / "staging"), commit)
    tiny_llama(tmp_path / "local", seed=5)
    manifest = tmp_path / "batch.toml"
    manifest.write_text(
        'outtypes = ["f16", "q4_0"]\nquantized_by = "test suite"\n\n'
        '[[models]]\nsource = "hf:acme/tiny@main"\n\n'
        '[[models]]\nsource = "local"\nname = "Tiny Llama"\nfinetune = "Chat"\n'
        'version = "v2.0"\nlicense = "mit"\nouttypes = ["q8_0"]\n'
    )
    plan = load_manifest(manifest)
    assert [j.id for j in plan.jobs] == ["acme--tiny", "local"]
    assert plan.jobs[0].source.folder == snapshot and plan.jobs[0].source.commit == commit
    report = convert_batch(plan, tmp_path / "out")
    assert report.ok, report.failed
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.gguf")) == [
        "Tiny-Llama-60K-Chat-v2.0-Q8_0.gguf",
        "tiny-60K-F16.gguf",
        "tiny-60K-Q4_0.gguf",
    ]
    # GGUF keys, also in the file llama.cpp's quantizer made from the F16
    for name in ("tiny-60K-F16.gguf", "tiny-60K-Q4_0.gguf"):
        reader = gguf.GGUFReader(out / name)
        assert _field(reader, gguf.Keys.General.SOURCE_URL) == "https://huggingface.co/acme/tiny"
        assert _field(reader, gguf.Keys.General.QUANTIZED_BY) == "test suite"
        assert _field(reader, prov.KEY_REVISION) == commit
        files = dict(
            zip(_field(reader, prov.KEY_FILES), _field(reader, prov.KEY_SHA256), strict=True)
        )
        assert set(files) == {
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        }
        for f, digest in files.items():
            assert hashlib.sha256((snapshot / f).read_bytes()).hexdigest() == digest
        assert _field(reader, prov.KEY_LLAMA_CPP).startswith("llama-cpp-python ")
    sidecar = json.loads((out / "tiny-60K-Q4_0.provenance.json").read_text())
    assert (
        sidecar["sha256"] == hashlib.sha256((out / "tiny-60K-Q4_0.gguf").read_bytes()).hexdigest()
    )
    assert sidecar["bytes"] == (out / "tiny-60K-Q4_0.gguf").stat().st_size
    assert sidecar["from"] == "f16" and sidecar["source"]["commit"] == commit
    assert sidecar["source"]["repo_id"] == "acme/tiny" and sidecar["source"]["revision"] == "main"
    assert set(sidecar["versions"]) == {"llorch", "converter", "llama_cpp_python", "gguf"}
    assert sidecar["verification"]["tokenizer"] is True and sidecar["verification"]["strings"] > 0
    named = gguf.GGUFReader(out / "Tiny-Llama-60K-Chat-v2.0-Q8_0.gguf")
    assert _field(named, gguf.Keys.General.NAME) == "Tiny Llama"
    assert _field(named, gguf.Keys.General.LICENSE) == "mit"
    assert _field(named, gguf.Keys.General.SOURCE_URL) is None  # a local folder has no URL


def test_manifest_errors_name_the_entry(tmp_path: Path) -> None:
    tiny_llama(tmp_path / "m")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[models]]\nsource = "m"\ncolour = "blue"\n')
    with pytest.raises(ManifestError, match=r"models\.0\.colour"):
        load_manifest(bad)
    bad.write_text('[[models]]\nsource = "m"\nouttypes = ["q9_x"]\n')
    with pytest.raises(ManifestError, match=r"models\[0\].*q9_x"):
        load_manifest(bad)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"models": [{"source": "hf:acme/absent"}]}))
    with pytest.raises(ManifestError) as info:
        load_manifest(missing)
    assert isinstance(info.value.__cause__, SourceResolveError)


def test_parse_size() -> None:
    assert parse_size("512M") == 512 << 20 and parse_size("1.5GiB") == 3 << 29
    assert parse_size("2g") == 2 << 30 and parse_size("1000") == 1000
    with pytest.raises(Exception, match="not a size"):
        parse_size("lots")
