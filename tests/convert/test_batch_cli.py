"""`llorch convert-batch`: JSON lines or bars, the summary table, exit statuses."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from tiny_hf import tiny_llama

from llorch.cli import main


@pytest.fixture(autouse=True)
def _own_digest_memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache" / "gguf"))


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_folders_json_lines_table_and_exit_status(tmp_path: Path, capsys: Any) -> None:
    src = tmp_path / "src"
    tiny_llama(src / "good")
    broken = tiny_llama(src / "broken", seed=2) / "config.json"
    broken.write_text("{not json")
    argv = ["convert-batch", str(src), "--out", str(tmp_path / "out"), "--outtypes", "f16,q8_0"]
    assert main([*argv, "--jobs", "2", "--max-ram", "8G"]) == 1
    captured = capsys.readouterr()
    events = _lines(captured.out)  # not a terminal: every stdout line is an event
    assert events[-1]["event"] == "report" and events[-1]["ok"] is False
    jobs = {j["id"]: j for j in events[-1]["jobs"]}
    assert jobs["good"]["ok"] and [o["outtype"] for o in jobs["good"]["outputs"]] == ["f16", "q8_0"]
    assert jobs["broken"]["error_type"] == "InvalidFileError"
    table = captured.err.splitlines()
    header = ["job", "outtypes", "sizes", "seconds", "verification", "quality", "error"]
    assert table[0].split() == header
    row = next(line for line in table if line.startswith("broken"))
    assert "InvalidFileError" in row and "config.json" in row
    assert table[-1].startswith("1 of 2 jobs succeeded")

    broken.write_text(json.dumps(json.loads((src / "good" / "config.json").read_text())))
    assert main([*argv, "--json"]) == 0  # only the repaired job runs
    events = _lines(capsys.readouterr().out)
    assert {(e["job"], e["outtype"]) for e in events if e["event"] == "skip"} == {
        ("good", "f16"),
        ("good", "q8_0"),
    }
    assert {e["job"] for e in events if e["event"] == "output"} == {"broken"}


def test_manifest_on_a_terminal(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    tiny_llama(tmp_path / "models" / "m")
    manifest = tmp_path / "batch.toml"
    manifest.write_text('out = "gguf"\nouttypes = ["q8_0"]\n[[models]]\nsource = "models/m"\n')
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["convert-batch", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert not out.lstrip().startswith("{")  # a table, not JSON lines
    assert out.splitlines()[1].split()[:2] == ["m", "q8_0"]
    assert (tmp_path / "gguf" / "m-60K-Q8_0.gguf").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--outtypes", "f16,q9_x"], "unknown outtype 'q9_x'"),
        (["--jobs", "0"], "--jobs 0"),
        (["--max-ram", "lots"], "not a size"),
        ([], "no output folder"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, capsys: Any, extra: list[str], message: str) -> None:
    tiny_llama(tmp_path / "m")
    out = [] if not extra else ["--out", str(tmp_path / "out")]
    assert main(["convert-batch", str(tmp_path / "m"), *out, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("llorch convert-batch: error:")
    assert not (tmp_path / "out").exists()
