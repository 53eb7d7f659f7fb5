"""`llorch convert-batch`: the CLI over convert_batch (registered by llorch.convert.cli).

Exit status: 0 every job succeeded (skipped outputs included), 1 at least one job failed (the
others were done), 2 the plan could not be built (bad manifest, unknown outtype, missing
folder, output folder in use), 130 Ctrl-C, 143 SIGTERM (jobs stopped, no partial output).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from llorch.convert.batch.plan import DEFAULT_OUTTYPES
from llorch.convert.cli_common import Terminated, fail, interrupted, sigterm_unwinds

COMMAND = "convert-batch"
EXECUTORS = ("local", "ray")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        COMMAND,
        help="convert many HF checkpoints to many GGUF types, resumably",
        description="Convert the sources of a manifest (TOML or JSON), or every HF folder in "
        "the given folders, to GGUF: each source read once, every other type quantized from "
        "it, finished outputs (matching provenance) skipped.",
    )
    p.add_argument("sources", nargs="+", metavar="MANIFEST|DIR", help="a manifest, or folders")
    p.add_argument("-o", "--out", help="output folder (default: the manifest's `out`)")
    p.add_argument(
        "--outtypes",
        help=f"comma-separated types (default: the manifest's, else {','.join(DEFAULT_OUTTYPES)})",
    )
    p.add_argument("--jobs", type=int, default=1, help="jobs run at the same time (default 1)")
    p.add_argument(
        "--max-ram",
        metavar="SIZE",
        help="memory the running jobs may use together, e.g. 16G (default: 80%% of available)",
    )
    p.add_argument(
        "--verify",
        choices=("tokenizer", "logits"),
        help="logits: also compare each output's logits with transformers' on a short prompt "
        "(needs torch and transformers); default: the manifest's `verify`, else tokenizer",
    )
    p.add_argument(
        "--imatrix",
        metavar="FILE|CALIB.txt",
        help="importance matrix for every job: a file, or a calibration text computed once per "
        "source from its high-precision output and reused for every type (default: the "
        "manifest's `imatrix`)",
    )
    p.add_argument("--imatrix-chunk", type=int, help="tokens per calibration chunk (512)")
    p.add_argument(
        "--quality",
        metavar="EVAL.txt",
        help="measure every quantized output against the source's high-precision output on "
        "this text (KL divergence, top-1 agreement, perplexity); default: the manifest's",
    )
    p.add_argument("--quality-chunk", type=int, help="tokens per evaluation chunk (512)")
    p.add_argument(
        "--push",
        metavar="ORG/REPO",
        help="upload every source's finished outputs to this existing Hugging Face model repo "
        "with a generated model card, one commit per source, skipping files it already has "
        "(default: the manifest's `push`); the token is huggingface_hub's (HF_TOKEN)",
    )
    p.add_argument("--executor", choices=EXECUTORS, default="local", help="where jobs run")
    p.add_argument("--address", help="Ray cluster address (with --executor ray)")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout, even on a terminal")
    p.set_defaults(func=run_batch)


def _plan(args: argparse.Namespace) -> Any:
    from llorch.convert.batch.plan import load_manifest, plan_from_dirs, with_texts

    types = args.outtypes.split(",") if args.outtypes else None
    first = args.sources[0]
    imatrix = args.imatrix is not None
    if len(args.sources) == 1 and os.path.isfile(first):
        plan = load_manifest(first, outtypes=types, has_imatrix=imatrix)
    else:
        plan = plan_from_dirs(args.sources, types or DEFAULT_OUTTYPES, has_imatrix=imatrix)
    plan = with_texts(
        plan,
        imatrix=args.imatrix,
        imatrix_chunk=args.imatrix_chunk,
        quality=args.quality,
        quality_chunk=args.quality_chunk,
        push=args.push,
    )
    if args.verify == "logits":  # the flag wins over the manifest, for every job
        jobs = tuple(dataclasses.replace(j, verify=True, verify_logits=True) for j in plan.jobs)
        plan = dataclasses.replace(plan, jobs=jobs)
    return plan


def run_batch(args: argparse.Namespace) -> int:
    from llorch.convert.batch.api import convert_batch
    from llorch.convert.batch.memory import parse_size
    from llorch.convert.batch.progress import JsonLines, ProgressBars, summary_table
    from llorch.convert.errors import MODEL_ERRORS

    if args.jobs < 1:
        return fail(COMMAND, f"--jobs {args.jobs}: must be at least 1")
    try:
        plan = _plan(args)
        out = args.out or plan.out
        if out is None:
            return fail(COMMAND, "no output folder: give --out (or `out` in the manifest)")
        max_ram = parse_size(args.max_ram) if args.max_ram else None
        executor = None
        if args.executor == "ray":
            from llorch.convert.batch.ray_executor import RayExecutor

            executor = RayExecutor(address=args.address, max_ram=max_ram)
    except MODEL_ERRORS as exc:
        return fail(COMMAND, str(exc))
    terminal = sys.stdout.isatty() and not args.json
    sink: Any = ProgressBars() if terminal else JsonLines(sys.stdout)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    try:
        with sigterm_unwinds():
            report = convert_batch(
                plan,
                out,
                jobs=args.jobs,
                max_ram=max_ram,
                threads=threads,
                on_event=sink,
                executor=executor,
            )
    except MODEL_ERRORS as exc:
        return fail(COMMAND, str(exc))
    except (KeyboardInterrupt, Terminated) as exc:
        return interrupted(COMMAND, exc, "finished outputs kept")
    finally:
        sink.close()
    pushed_ok = _push(plan, report, sink if not terminal else None)
    if not terminal:
        print(json.dumps({"event": "report", **report.to_json()}), flush=True)
    print(summary_table(report), file=sys.stdout if terminal else sys.stderr)
    return 0 if report.ok and pushed_ok else 1


def _push(plan: Any, report: Any, sink: Any) -> bool:
    """Each succeeded job with a `push` repo, pushed; a refused push is one line on stderr."""
    from llorch.convert.batch.push import PushError, push_job

    ok = True
    done = {j.id for j in report.jobs if j.ok}
    for job in plan.jobs:
        if job.push is None or job.id not in done:
            continue
        try:
            result = push_job(report.out_dir, job.id, job.push, on_event=sink)
        except PushError as exc:
            ok = False
            if sink is not None:
                sink({"event": "push_error", "job": job.id, "repo": job.push, "message": str(exc)})
            print(f"llorch {COMMAND}: error: push of {job.id}: {exc}", file=sys.stderr)
            continue
        if sink is None:
            print(
                f"pushed {job.id} to {job.push}: {len(result.uploaded)} file(s) uploaded, "
                f"{len(result.unchanged)} unchanged"
            )
    return ok
