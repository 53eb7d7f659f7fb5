"""convert_batch reruns: finished outputs skipped without reading weights, changed inputs
redone, and a batch killed with SIGKILL leaves no partial output and resumes with the rest."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gguf
import pytest
from tiny_hf import tiny_llama

from llorch.convert.batch import convert_batch, load_manifest, plan_from_dirs

TYPES = ["f16", "q8_0", "q4_0"]

# A rerun in a fresh interpreter (nothing remembered in memory), watching every file it opens.
_RERUN = """
import json, os, sys
opened = []

def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.fsdecode(args[0]))

sys.addaudithook(hook)
from llorch.convert.batch import convert_batch, plan_from_dirs
events = []
report = convert_batch(plan_from_dirs([sys.argv[1]], sys.argv[3].split(",")), sys.argv[2],
                       on_event=events.append)
print(json.dumps({"ok": report.ok, "events": events,
                  "weights_opened": [p for p in opened if p.endswith(".safetensors")]}))
"""

# A batch whose events are printed as they come, so the test can kill it at a known point.
_BATCH = """
import json, sys
from llorch.convert.batch import convert_batch, plan_from_dirs
def emit(event):
    print(json.dumps(event), flush=True)
convert_batch(plan_from_dirs([sys.argv[1]], sys.argv[3].split(",")), sys.argv[2], jobs=1,
              on_event=emit)
"""


@pytest.fixture(autouse=True)
def _own_digest_memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache" / "gguf"))


def _outputs(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["job"], e["outtype"]) for e in events if e["event"] == "output"}


def _skipped(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["job"], e["outtype"]) for e in events if e["event"] == "skip"}


def _stamps(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".gguf"}


def test_rerun_skips_without_reading_weights(tmp_path: Path) -> None:
    src = tmp_path / "src"
    tiny_llama(src / "a", seed=1)
    tiny_llama(src / "b", seed=2)
    out = tmp_path / "out"
    first = convert_batch(plan_from_dirs([src], TYPES), out, jobs=2)
    assert first.ok and all(len(j.outputs) == 3 for j in first.jobs)
    before = _stamps(out)

    proc = subprocess.run(
        [sys.executable, "-c", _RERUN, str(src), str(out), ",".join(TYPES)],
        capture_output=True, text=True, check=True, env=os.environ.copy(),
    )  # fmt: skip
    rerun = json.loads(proc.stdout)
    assert rerun["ok"] and rerun["weights_opened"] == []
    assert _skipped(rerun["events"]) == {(j, t) for j in "ab" for t in TYPES}
    assert not _outputs(rerun["events"])
    assert not [e for e in rerun["events"] if e["event"] == "job_start"]  # no process started
    assert _stamps(out) == before


def test_changed_source_or_option_is_redone(tmp_path: Path) -> None:
    src = tmp_path / "src"
    tiny_llama(src / "a", seed=1)
    tiny_llama(src / "b", seed=2)
    out = tmp_path / "out"
    assert convert_batch(plan_from_dirs([src], ["f16", "q8_0"]), out).ok

    tok = src / "b" / "tokenizer_config.json"  # a tokenizer file, not the weights
    tok.write_text(json.dumps({**json.loads(tok.read_text()), "model_max_length": 64}))
    events: list[dict[str, Any]] = []
    assert convert_batch(plan_from_dirs([src], ["f16", "q8_0"]), out, on_event=events.append).ok
    assert _outputs(events) == {("b", "f16"), ("b", "q8_0")}
    assert _skipped(events) == {("a", "f16"), ("a", "q8_0")}
    record = json.loads((out / "b-60K-F16.provenance.json").read_text())
    assert record["source_files"]["tokenizer_config.json"] != "", record

    # one more outtype: only it is made, quantized from the finished F16 (no conversion)
    events.clear()
    assert convert_batch(
        plan_from_dirs([src], ["f16", "q8_0", "q4_0"]), out, on_event=events.append
    ).ok
    assert _outputs(events) == {("a", "q4_0"), ("b", "q4_0")}
    assert _skipped(events) == {(j, t) for j in "ab" for t in ("f16", "q8_0")}
    assert not [e for e in events if e["event"] == "stage" and e["stage"].startswith("convert")]

    # a changed option (a name override) redoes the job, and the renamed files replace the old
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        'outtypes = ["f16"]\n[[models]]\nsource = "src/a"\nid = "a"\nname = "Renamed"\n'
    )
    events.clear()
    assert convert_batch(load_manifest(manifest), out, on_event=events.append).ok
    assert _outputs(events) == {("a", "f16")}
    assert (out / "Renamed-60K-F16.gguf").is_file()
    assert (
        not (out / "a-60K-F16.gguf").exists() and not (out / "a-60K-F16.provenance.json").exists()
    )


def test_kill_9_of_the_whole_batch_then_resume(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("a", "b", "c"):
        tiny_llama(src / name, seed=ord(name), hidden=256)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", _BATCH, str(src), str(out), ",".join(TYPES)],
        stdout=subprocess.PIPE, text=True, start_new_session=True, env=os.environ.copy(),
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[dict[str, Any]] = []
    try:
        for line in proc.stdout:
            seen.append(json.loads(line))
            # jobs=1: job a has ended; job b is writing its first tensors into a temporary
            if seen[-1]["event"] == "tensor" and seen[-1]["job"] == "b":
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the batch and its job processes, no clean-up
        proc.wait()
    assert ("a", "q4_0") in _outputs(seen), seen

    finished = set()
    for path in out.glob("*.gguf"):  # whatever has its final name is a whole, loadable file
        reader = gguf.GGUFReader(path)
        assert len(reader.tensors) == 11, path
        if path.with_name(path.stem + ".provenance.json").exists():
            finished.add(path.name)
    assert {"a-733K-F16.gguf", "a-733K-Q8_0.gguf", "a-733K-Q4_0.gguf"} <= finished
    assert not any(n.startswith("c-") for n in finished)
    left = {str(p) for p in out.glob(".*.tmp")}  # b's partial write, unless b was quicker

    events: list[dict[str, Any]] = []
    report = convert_batch(plan_from_dirs([src], TYPES), out, on_event=events.append)
    assert report.ok
    skipped_files = {e["file"] for e in events if e["event"] == "skip"}
    assert skipped_files == finished
    everything = {(j, t) for j in "abc" for t in TYPES}
    assert _outputs(events) == everything - _skipped(events)
    assert {e["path"] for e in events if e["event"] == "removed_temporary"} == left
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names
    assert len([n for n in names if n.endswith(".gguf")]) == len(everything)


def _gone(pid: int) -> bool:
    try:  # a dead process reparented to init may linger as a zombie until reaped
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (FileNotFoundError, IndexError):
        return True


def test_jobs_of_a_killed_batch_stop_and_clean_up(tmp_path: Path) -> None:
    """Only the batch process is killed: its job sees stdin close and unwinds as on SIGTERM."""
    src = tmp_path / "src"
    tiny_llama(src / "a", seed=1, hidden=256)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", _BATCH, str(src), str(out), "f16"],
        stdout=subprocess.PIPE, text=True, start_new_session=True, env=os.environ.copy(),
    )  # fmt: skip
    assert proc.stdout is not None
    job_pid = 0
    try:
        for line in proc.stdout:
            event = json.loads(line)
            job_pid = event.get("pid", job_pid)
            if event["event"] == "tensor":
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for _ in range(600):  # a bound, not a timing claim: the job stops within it
            if _gone(job_pid):
                break
            time.sleep(0.1)
        assert _gone(job_pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    # stopped mid-conversion: neither a temporary nor an output
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.gguf")), list(out.iterdir())
