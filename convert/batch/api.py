"""convert_batch(plan, out_dir) -> BatchReport: many sources, many outtypes, resumable.

Before any job starts, every output whose provenance sidecar still matches (llorch.convert.
batch.provenance) is skipped, without reading weights; a job with nothing left to do starts
no process. The output folder is locked for the batch's lifetime (an flock, released by the
kernel even on kill -9), which makes any llorch temporary found in it at start a leftover of a
killed batch, removed then.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llorch.convert import projector
from llorch.convert.batch import provenance
from llorch.convert.batch.errors import OutDirLockedError
from llorch.convert.batch.executor import Event, LocalExecutor, Outcome, Task
from llorch.convert.batch.memory import default_max_ram, estimate_peak
from llorch.convert.batch.plan import JobSpec, Plan
from llorch.detector import DetectionError
from llorch.detector.safetensors import Checkpoint

LOCK_NAME = ".llorch-batch.lock"


@dataclass
class JobReport:
    id: str
    source: str
    outtypes: list[str]
    outputs: list[dict[str, Any]] = field(default_factory=list)  # sidecar records (+ skipped)
    seconds: float = 0.0
    error: str | None = None
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BatchReport:
    out_dir: str
    jobs: list[JobReport]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(j.ok for j in self.jobs)

    @property
    def failed(self) -> list[JobReport]:
        return [j for j in self.jobs if not j.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "ok": self.ok,
            "seconds": self.seconds,
            "jobs": [{**asdict(j), "ok": j.ok} for j in self.jobs],
        }


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    fd = os.open(out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise OutDirLockedError(f"{out_dir}: another batch is writing here") from exc
        yield
    finally:
        os.close(fd)


def _outputs(job: JobSpec) -> list[str]:
    """The job's outputs: its outtypes, and a multimodal checkpoint's projector."""
    try:
        mmproj = projector.has_projector(job.source.folder)
    except DetectionError:
        mmproj = False  # the job itself reports what is wrong with its config
    return [*job.outtypes, *([projector.MMPROJ] if mmproj else [])]


def _todo(job: JobSpec, records: dict[tuple[str, str], dict[str, Any]], out_dir: Path) -> list[str]:
    outputs = _outputs(job)
    found = [records.get((job.id, t)) for t in outputs]
    if not any(found):
        return outputs  # nothing to compare: no need to hash the sources here
    files = provenance.source_files(job.source.folder)
    return [
        t
        for t, record in zip(outputs, found, strict=True)
        if record is None
        or not provenance.is_current(
            record, provenance.expected(job.id, t, files, job.options()), out_dir
        )
    ]


def _estimate(job: JobSpec) -> int:
    try:
        largest = max((ref.n_elements for ref in Checkpoint(job.source.folder)), default=0)
    except DetectionError:
        largest = 0  # the job itself reports what is wrong with its weights
    return estimate_peak(largest)


def convert_batch(
    plan: Plan,
    out_dir: str | os.PathLike[str],
    *,
    jobs: int = 1,
    max_ram: int | None = None,
    threads: int = 0,
    on_event: Callable[[Event], None] | None = None,
    executor: Any = None,
) -> BatchReport:
    """Convert every job of `plan` into `out_dir`; one job's failure is its own error.

    `executor`: None for local processes (`jobs` at a time, within `max_ram` bytes, default
    80% of the available memory), or any object with LocalExecutor's `run`.
    """
    start = time.monotonic()
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    emit = on_event or (lambda _: None)
    reports = {j.id: JobReport(j.id, j.source.spec, list(j.outtypes)) for j in plan.jobs}
    with _locked(out):
        for path in provenance.remove_stale_temporaries(out):
            emit({"event": "removed_temporary", "path": str(path)})
        records = provenance.read_sidecars(out)
        tasks = []
        for job in plan.jobs:
            todo = _todo(job, records, out)
            for t in (t for t in _outputs(job) if t not in todo):
                reports[job.id].outputs.append({**records[(job.id, t)], "skipped": True})
                emit(
                    {
                        "event": "skip",
                        "job": job.id,
                        "outtype": t,
                        "file": records[(job.id, t)]["file"],
                    }
                )
            if todo:
                spec = {
                    "id": job.id,
                    "source": job.source.to_json(),
                    "outtypes": list(job.outtypes),
                    "todo": todo,
                    "verify": job.verify,
                    "verify_logits": job.verify_logits,
                    "pre": job.pre,
                    "overrides": job.overrides,
                    "imatrix": job.imatrix,
                    "imatrix_chunk": job.imatrix_chunk,
                    "quality": job.quality,
                    "quality_chunk": job.quality_chunk,
                    "options": job.options(),
                    "out_dir": str(out),
                    "threads": threads,
                }
                tasks.append(Task(job.id, spec, _estimate(job)))
        emit({"event": "batch_start", "jobs": len(plan.jobs), "to_run": len(tasks)})
        started: dict[str, float] = {}

        def on_job_event(event: Event) -> None:
            job = str(event.get("job"))
            if event["event"] == "job_start":
                started[job] = time.monotonic()
            elif event["event"] == "job_end":
                reports[job].seconds = round(time.monotonic() - started[job], 3)
            elif event["event"] == "output":
                record = {k: v for k, v in event.items() if k != "event"}
                reports[job].outputs.append({**record, "skipped": False})
                _drop_renamed(out, records.get((job, record["outtype"])), record["file"])
            emit(event)

        runner = executor or LocalExecutor(jobs=jobs, max_ram=max_ram or default_max_ram())
        outcomes: dict[str, Outcome] = runner.run(tasks, on_job_event)
    for job_id, outcome in outcomes.items():
        reports[job_id].error, reports[job_id].error_type = outcome.error, outcome.error_type
    report = BatchReport(str(out), list(reports.values()), round(time.monotonic() - start, 3))
    emit({"event": "batch_end", "ok": report.ok, "failed": [j.id for j in report.failed]})
    return report


def _drop_renamed(out: Path, old: dict[str, Any] | None, new_file: str) -> None:
    """A redone output under a new name (a changed name override) replaces the old file."""
    if old is None or old.get("file") == new_file:
        return
    stale = out / str(old.get("file"))
    for path in (stale, provenance.sidecar_path(stale)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
