"""`llorch convert-lora ADAPTER_DIR --base BASE_DIR -o OUT.gguf`: thin CLI over convert_lora.

Exit codes as `llorch convert`: 0 success; 2 any error (one line on stderr naming the file and
the problem, or a JSON object with --json), an existing output without --force included;
130 Ctrl-C, 143 SIGTERM (no output and no temporary file left).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from llorch.convert.cli_common import Terminated, fail, interrupted, sigterm_unwinds
from llorch.convert.errors import MODEL_ERRORS, OutputExistsError
from llorch.convert.writer import DIRECT


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "convert-lora",
        help="convert a PEFT LoRA adapter to a GGUF LoRA for llama.cpp",
        description="Convert a PEFT LoRA adapter (adapter_config.json, "
        "adapter_model.safetensors) to a GGUF LoRA for the GGUF converted from its base.",
    )
    p.add_argument("adapter", help="PEFT adapter folder")
    p.add_argument(
        "--base", required=True, help="the base model's HF folder (or repo id in the HF cache)"
    )
    p.add_argument("-o", "--output", required=True, help="output file, or an existing folder")
    p.add_argument("--outtype", default="f16", choices=list(DIRECT), help="default: f16")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_convert_lora)


def run_convert_lora(args: argparse.Namespace) -> int:
    from llorch.convert.lora import convert_lora

    command = "convert-lora"
    try:
        with sigterm_unwinds():
            report = convert_lora(
                args.adapter, args.base, args.output, outtype=args.outtype, overwrite=args.force
            )
    except OutputExistsError as exc:
        return fail(command, OutputExistsError(exc.path, "--force"), as_json=args.json)
    except MODEL_ERRORS as exc:
        return fail(command, exc, as_json=args.json)
    except (KeyboardInterrupt, Terminated) as exc:
        return interrupted(command, exc, "no output written")
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        scaling = "alpha/sqrt(r), rsLoRA" if report.rslora else "alpha/r"
        print(
            f"{report.output}: {report.llama_arch} LoRA {report.outtype}, {report.n_modules} "
            f"modules, r={report.rank}, alpha={report.alpha:g} ({scaling}), "
            f"{report.bytes / 1e6:.2f} MB in {report.seconds:.1f}s"
        )
        for note in report.notes:
            print(f"note: {note}")
    return 0
