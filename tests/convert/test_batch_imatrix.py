"""convert-batch with an importance matrix and quality measurement: computed once per source,
recorded in provenance, byte-identical to llama-quantize with the same matrix, resumable after
kill -9 in the middle of either."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import pytest
from llama_tools import calibration_text, tool
from tiny_hf import tiny_llama

from llorch.convert import imatrix
from llorch.convert.batch import convert_batch, load_manifest, plan_from_dirs
from llorch.convert.batch.plan import with_texts
from llorch.convert.batch.progress import summary_table
from llorch.convert.errors import ImatrixRequiredError
from llorch.detector import detect

TYPES = ["f16", "q4_k_m", "iq2_xxs"]
CHUNK = 64

_BATCH = """
import json, sys
from llorch.convert.batch import convert_batch, plan_from_dirs
from llorch.convert.batch.plan import with_texts
def emit(event):
    print(json.dumps(event), flush=True)
plan = plan_from_dirs([sys.argv[1]], sys.argv[3].split(","), has_imatrix=True)
plan = with_texts(plan, imatrix=sys.argv[4], imatrix_chunk=64, quality=sys.argv[4],
                  quality_chunk=64)
convert_batch(plan, sys.argv[2], jobs=1, on_event=emit)
"""


@pytest.fixture(autouse=True)
def _own_digest_memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache" / "gguf"))


def _plan(src: Path, text: Path) -> Any:
    plan = plan_from_dirs([src], TYPES, has_imatrix=True)
    return with_texts(plan, imatrix=str(text), imatrix_chunk=CHUNK, quality=str(text),
                      quality_chunk=CHUNK)  # fmt: skip


def _tensors(reader: gguf.GGUFReader) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, bytes(t.data.tobytes())) for t in reader.tensors}


def _sidecar(out: Path, outtype: str) -> dict[str, Any]:
    [path] = out.glob(f"*-{outtype.upper()}.provenance.json")
    return dict(json.loads(path.read_text()))


def test_batch_with_imatrix_and_quality(tmp_path: Path) -> None:
    src = tiny_llama(tmp_path / "src" / "m", hidden=256, seed=7)
    text = calibration_text(tmp_path / "calib.txt", lines=20)
    out = tmp_path / "out"
    events: list[dict[str, Any]] = []
    report = convert_batch(_plan(src.parent, text), out, on_event=events.append)
    assert report.ok, report.jobs
    assert [e["file"] for e in events if e["event"] == "imatrix"] == ["m-733K.imatrix.gguf"]
    kept = out / "m-733K.imatrix.gguf"
    assert imatrix.load(kept).chunk_size == CHUNK
    assert "quality" not in _sidecar(out, "f16")
    for t in ("q4_k_m", "iq2_xxs"):
        record = _sidecar(out, t)
        assert record["imatrix"]["calibration_sha256"] == imatrix.sha256(text)
        assert record["imatrix"]["entries"] == 7
        q = record["quality"]
        assert q["reference"] == "f16" and q["tokens"] > 0 and 0 < q["top1"] <= 1
        assert q["kld_mean"] > 0 and q["kld_p99"] >= q["kld_mean"] * 0.5
        # the F16 output's tokenizer check stands for the quantized ones (same vocabulary)
        assert record["verification"]["tokenizer"] is True
        base = _sidecar(out, "f16")["verification"]
        assert record["verification"]["strings"] == base["strings"] > 0
        assert "tokenizer checked in the f16 output" in " ".join(record["verification"]["notes"])
    q2, q4 = _sidecar(out, "iq2_xxs")["quality"], _sidecar(out, "q4_k_m")["quality"]
    assert q2["kld_mean"] > q4["kld_mean"]  # fewer bits, further from the F16
    table = summary_table(report)
    assert "iq2_xxs KLD" in table and "q4_k_m KLD" in table
    # the IQ2_XXS file's tensors are llama-quantize's with the kept matrix; its metadata adds
    # the quality measured (llorch detect shows it)
    ref = tmp_path / "ref.gguf"
    cmd = [str(tool("llama-quantize")), "--imatrix", str(kept), str(out / "m-733K-F16.gguf")]
    subprocess.run([*cmd, str(ref), "IQ2_XXS", "2"], check=True, capture_output=True)
    ours_reader = gguf.GGUFReader(out / "m-733K-IQ2_XXS.gguf")
    assert _tensors(ours_reader) == _tensors(gguf.GGUFReader(ref))
    shown = detect(out / "m-733K-IQ2_XXS.gguf").to_json()["provenance"]
    assert shown["llorch.quality.kld_mean"] == pytest.approx(q2["kld_mean"], rel=1e-6)
    assert shown["llorch.quality.reference"] == "f16"
    assert shown["quantize.imatrix.file"] == str(kept)
    # a rerun does nothing: every output skipped, the matrix not recomputed
    again: list[dict[str, Any]] = []
    assert convert_batch(_plan(src.parent, text), out, on_event=again.append).ok
    assert len([e for e in again if e["event"] == "skip"]) == 3
    assert not [e for e in again if e["event"] in ("imatrix", "output")]


def test_type_needing_imatrix_refused_at_plan_time(tmp_path: Path) -> None:
    src = tiny_llama(tmp_path / "src" / "m", hidden=256, seed=7)
    with pytest.raises(ImatrixRequiredError, match="iq2_xxs"):
        plan_from_dirs([src], TYPES)
    text = calibration_text(tmp_path / "calib.txt", lines=10)
    manifest = tmp_path / "batch.toml"
    manifest.write_text(
        f'outtypes = ["f16", "iq1_s"]\n[[models]]\nsource = "{src}"\nimatrix = "calib.txt"\n'
    )
    [job] = load_manifest(manifest).jobs
    assert job.imatrix == str(text) and job.options()["imatrix"]["sha256"] == imatrix.sha256(text)
    manifest.write_text(f'outtypes = ["f16", "iq1_s"]\n[[models]]\nsource = "{src}"\n')
    with pytest.raises(Exception, match="needs an importance matrix"):
        load_manifest(manifest)


@pytest.mark.parametrize("stage", ["imatrix", "quality q4_k_m"])
def test_kill_9_during_imatrix_or_quality_resumes(tmp_path: Path, stage: str) -> None:
    src = tiny_llama(tmp_path / "src" / "m", hidden=256, seed=7)
    text = calibration_text(tmp_path / "calib.txt", lines=20)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", _BATCH, str(src.parent), str(out), ",".join(TYPES), str(text)],
        stdout=subprocess.PIPE, text=True, start_new_session=True, env=os.environ.copy(),
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(json.loads(line))
            if seen[-1]["event"] == "stage" and seen[-1]["stage"] == stage:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert seen[-1].get("stage") == stage, seen
    events: list[dict[str, Any]] = []
    report = convert_batch(_plan(src.parent, text), out, on_event=events.append)
    assert report.ok, report.jobs
    done = {e["outtype"] for e in events if e["event"] == "output"}
    skipped = {e["outtype"] for e in events if e["event"] == "skip"}
    assert "f16" in skipped and done == {"q4_k_m", "iq2_xxs"}
    # killed while computing: computed again; killed later: the kept matrix is reused
    assert bool([e for e in events if e["event"] == "imatrix"]) == (stage == "imatrix")
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names
    assert all("quality" in _sidecar(out, t) for t in ("q4_k_m", "iq2_xxs"))
