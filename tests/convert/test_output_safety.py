"""The output of `llorch convert`: never overwritten without --force, never a temporary left
behind on SIGTERM, and each source file read once per conversion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llorch.cli import main
from llorch.convert import cached_gguf, convert
from llorch.convert.errors import OutputExistsError

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
# Large enough that writing and quantizing take a while: tensors of ~1M elements each.
LARGE = {
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
}


def _state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_existing_output_is_refused_without_force(
    checkpoint: Any, tmp_path: Path, capsys: Any
) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious, not a model")
    before = _state(out)
    capsys.readouterr()
    assert main(["convert", str(built.folder), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(out) in err[0] and "--force" in err[0] and "already exists" in err[0]
    assert _state(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "o.gguf"]

    with pytest.raises(OutputExistsError, match="overwrite=True"):
        convert(built.folder, out)
    assert _state(out) == before

    assert main(["convert", str(built.folder), "-o", str(out), "--force", "--json"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"


def test_the_default_name_is_not_overwritten_either(
    checkpoint: Any, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["convert", str(built.folder), "--json"]) == 0
    out = Path(json.loads(capsys.readouterr().out)["output"])
    before = _state(out)
    assert main(["convert", str(built.folder), "-o", str(work)]) == 2  # a folder: default name
    assert "--force" in capsys.readouterr().err
    assert _state(out) == before


_SIGTERM_AT_THIRD_TENSOR = """
import os, signal, sys
from llorch.convert import writer
from llorch.cli import main

real = writer.encode
calls = []

def encode(*args):  # called for every block of every tensor, on the writer's threads
    calls.append(1)
    if len(calls) == 3:  # mid-write: the temporary file exists and is half written
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*args)

writer.encode = encode
sys.exit(main(["convert", sys.argv[1], "-o", sys.argv[2]]))
"""


def test_sigterm_while_writing_leaves_nothing(checkpoint: Any, tmp_path: Path) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _SIGTERM_AT_THIRD_TENSOR, str(built.folder), str(out_dir / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "terminated; no output written" in proc.stderr
    assert list(out_dir.iterdir()) == []


def test_sigterm_from_outside_leaves_nothing(checkpoint: Any, tmp_path: Path) -> None:
    """A real `llorch convert` process, signalled once its temporary file exists (the
    conversion, quantization and verification of LARGE take seconds after that)."""
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", LARGE)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cmd = [sys.executable, "-m", "llorch.cli", "convert", str(built.folder)]
    proc = subprocess.Popen(
        [*cmd, "-o", str(out_dir / "o.gguf"), "--outtype", "q4_k_m"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while proc.poll() is None and not any(out_dir.iterdir()):
            time.sleep(0.01)  # the temporary appears when writing starts
        assert proc.poll() is None, f"finished before it could be signalled: {proc.stderr}"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert list(out_dir.iterdir()) == []


_COUNT_READS = """
import json, os, sys
config_opens = []

def hashing(frame):
    while frame is not None:
        if frame.f_code.co_name == "_hash" and frame.f_globals["__name__"] == "llorch.digests":
            return True
        frame = frame.f_back
    return False

def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        if os.path.basename(os.fsdecode(args[0])) == "config.json":
            # the cache key's content hash reads the bytes; parsing is what is counted
            if not hashing(sys._getframe(1)):
                config_opens.append(1)

sys.addaudithook(hook)
from llorch.detector import safetensors
real = safetensors.read_header
headers = []

def read_header(file):
    headers.append(file.name)
    return real(file)

safetensors.read_header = read_header
os.environ["LLORCH_CACHE"] = sys.argv[3]
if sys.argv[1] == "convert":
    from llorch.convert import convert
    convert(sys.argv[2], sys.argv[3] + ".gguf")
else:
    from llorch.convert import cached_gguf
    cached_gguf(sys.argv[2])
print(json.dumps({"config": len(config_opens), "headers": sorted(headers)}))
"""


@pytest.mark.parametrize("entry", ["convert", "cached_gguf"])
def test_config_and_headers_are_read_once(entry: str, checkpoint: Any, tmp_path: Path) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY, shard_size="20KB")
    shards = sorted(p.name for p in built.folder.glob("*.safetensors"))
    assert len(shards) >= 2
    proc = subprocess.run(
        [sys.executable, "-c", _COUNT_READS, entry, str(built.folder), str(tmp_path / "c")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts == {"config": 1, "headers": shards}


def test_a_detection_is_converted_as_it_is(checkpoint: Any, tmp_path: Path) -> None:
    from llorch.detector import detect

    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    det = detect(built.folder)
    report = convert(det, tmp_path / "o.gguf", verify=False)
    assert report.source == det.source and report.parameters == det.parameters
    assert cached_gguf(tmp_path / "o.gguf") == tmp_path / "o.gguf"
