"""What convert-batch shows: tqdm bars on a terminal, JSON lines elsewhere, a summary table."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from llorch.convert.batch.api import BatchReport
from llorch.convert.batch.memory import human


class JsonLines:
    """One JSON object per event, flushed at once (orchestrators and CI logs read it live)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class ProgressBars:
    """An overall bar (jobs) and one bar per running job (its tensors), on stderr."""

    def __init__(self) -> None:
        self.overall: Any = None
        self.bars: dict[str, Any] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        from tqdm import tqdm

        kind, job = event["event"], event.get("job")
        if kind == "batch_start":
            self.overall = tqdm(total=event["to_run"], desc="jobs", unit="job", file=sys.stderr)
        elif kind == "plan" and job is not None:
            bar = tqdm(
                total=event["tensors"],
                desc=job,
                unit="tensor",
                leave=False,
                file=sys.stderr,
                position=len(self.bars) + 1,
            )
            self.bars[job] = bar
        elif kind == "tensor" and job in self.bars:
            self.bars[job].update(1)
        elif kind == "stage" and job in self.bars:
            self.bars[job].set_postfix_str(event["stage"])
        elif kind == "job_end":
            if job in self.bars:
                self.bars.pop(job).close()
            if self.overall is not None:
                self.overall.update(1)
        elif kind in ("waiting", "removed_temporary") and self.overall is not None:
            self.overall.write(f"{job or ''} {event.get('reason') or event.get('path')}".strip())

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if self.overall is not None:
            self.overall.close()


def _verification(outputs: list[dict[str, Any]]) -> str:
    # a projector (outtype mmproj) has no tokenizer to verify
    checks = [o.get("verification") or {} for o in outputs if o.get("outtype") != "mmproj"]
    if not checks:
        return "-"
    if all(c.get("tokenizer") for c in checks):
        return f"tokenizer ok ({min(c.get('strings', 0) for c in checks)} strings)"
    return "NOT verified"


def _quality(outputs: list[dict[str, Any]]) -> str:
    """Per measured output: its type, mean KL divergence and top-1 agreement."""
    parts = [
        f"{o['outtype']} KLD {q['kld_mean']:.4f} top-1 {q['top1']:.1%}"
        for o in outputs
        if (q := o.get("quality"))
    ]
    return "; ".join(parts) or "-"


def summary_table(report: BatchReport) -> str:
    """job, outtypes, sizes, seconds, verification, quality, error: one row per job."""
    header = ("job", "outtypes", "sizes", "seconds", "verification", "quality", "error")
    rows = [header]
    for job in report.jobs:
        sizes = [human(o["bytes"]) + (" (kept)" if o.get("skipped") else "") for o in job.outputs]
        rows.append(
            (
                job.id,
                ",".join(o["outtype"] for o in job.outputs) or ",".join(job.outtypes),
                ", ".join(sizes) or "-",
                f"{job.seconds:.1f}",
                _verification(job.outputs),
                _quality(job.outputs),
                f"{job.error_type}: {job.error}" if job.error else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows
    ]
    failed = len(report.failed)
    lines.append(
        f"{len(report.jobs) - failed} of {len(report.jobs)} jobs succeeded "
        f"in {report.seconds:.1f}s; output in {report.out_dir}"
    )
    return "\n".join(line.rstrip() for line in lines)
