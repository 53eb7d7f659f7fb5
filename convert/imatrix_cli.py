"""`llorch imatrix MODEL.gguf CALIB.txt -o OUT.imatrix.gguf`: thin CLI over imatrix.compute.

Exit codes as `llorch convert`: 0 success; 2 any error (one line on stderr naming the file and
the problem, or a JSON object with --json), an existing output without --force included;
130 Ctrl-C, 143 SIGTERM (no output and no temporary file left). The sums so far are kept in
`OUT.partial.npz` every --save-every chunks: a run stopped in any way, kill -9 included,
continues from there when run again with the same model, text and chunking.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from llorch.convert.cli_common import Terminated, fail, interrupted, sigterm_unwinds
from llorch.convert.errors import MODEL_ERRORS, OutputExistsError


def register(subparsers: Any) -> None:
    from llorch.convert.imatrix import DEFAULT_CHUNK, DEFAULT_SAVE_EVERY

    p = subparsers.add_parser(
        "imatrix",
        help="compute an importance matrix for quantization from a calibration text",
        description="Compute the importance matrix of a GGUF model (sums of squared inputs "
        "into every matrix multiplication, per expert for MoE) on a calibration text, in "
        "llama.cpp's GGUF imatrix format (llama-quantize --imatrix reads it).",
    )
    p.add_argument("model", help="GGUF model, preferably F16/BF16/F32")
    p.add_argument("calibration", help="calibration text file (UTF-8)")
    p.add_argument("-o", "--output", required=True, help="output file (.imatrix.gguf)")
    p.add_argument(
        "--chunk",
        type=int,
        default=DEFAULT_CHUNK,
        help=f"tokens per chunk, each evaluated from an empty cache (llama-imatrix's -c; "
        f"default {DEFAULT_CHUNK})",
    )
    p.add_argument("--chunks", type=int, help="at most this many chunks (default: all)")
    p.add_argument(
        "--save-every",
        type=int,
        default=DEFAULT_SAVE_EVERY,
        help="keep the progress in OUT.partial.npz every N chunks, from which a stopped run "
        f"continues (default {DEFAULT_SAVE_EVERY}; 0: never)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_imatrix)


def run_imatrix(args: argparse.Namespace) -> int:
    from llorch.convert import imatrix

    command = "imatrix"
    out = Path(args.output)
    if out.exists() and not args.force:
        return fail(command, OutputExistsError(out, "--force"), as_json=args.json)
    progress = sys.stderr.isatty() and not args.json
    partial = imatrix.partial_path(out)
    resumed = [0]

    def on_chunk(p: imatrix.Progress) -> None:
        resumed[0] = p.first
        if progress:
            print(f"\rchunk {p.chunk}/{p.chunks}", end="", file=sys.stderr, flush=True)

    start = time.monotonic()
    try:
        with sigterm_unwinds():
            matrix = imatrix.compute(
                args.model,
                args.calibration,
                chunk=args.chunk,
                chunks=args.chunks,
                n_threads=args.threads,
                on_chunk=on_chunk,
                partial=partial,
                save_every=args.save_every,
            )
            imatrix.save(matrix, out)
            partial.unlink(missing_ok=True)
    except MODEL_ERRORS as exc:
        return fail(command, exc, as_json=args.json)
    except (KeyboardInterrupt, Terminated) as exc:
        kept = f"; the progress is kept in {partial}" if partial.exists() else ""
        return interrupted(command, exc, f"no output written{kept}")
    finally:
        if progress:
            print(file=sys.stderr)
    report = {
        "output": str(out),
        "entries": len(matrix.entries),
        "chunks": matrix.chunk_count,
        "chunk_size": matrix.chunk_size,
        "resumed_after": resumed[0],
        "datasets": matrix.datasets,
        "calibration_sha256": imatrix.sha256(args.calibration),
        "seconds": round(time.monotonic() - start, 3),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        again = f" (continued after chunk {resumed[0]})" if resumed[0] else ""
        print(
            f"{out}: {report['entries']} entries over {report['chunks']} chunks of "
            f"{report['chunk_size']} tokens in {report['seconds']:.1f}s{again}"
        )
    return 0
