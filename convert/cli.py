"""`llorch detect` and `llorch convert`: thin CLI over llorch.detector.detect and convert.convert;
it also registers `convert-batch` (convert/batch/cli.py) and `convert-lora` (lora_cli.py).

Exit codes: 0 success; 1 `detect` found an unsupported model; 2 a detection or conversion
error (one line on stderr naming the file and the problem, or a JSON object with --json),
including an existing output file without --force; 130 Ctrl-C, 143 SIGTERM (no output and no
temporary file left). cli_common.py holds what the commands share.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llorch.convert.cli_common import Terminated, fail, interrupted, sigterm_unwinds
from llorch.convert.errors import MODEL_ERRORS, OutputExistsError

VERIFY_CHOICES = ("tokenizer", "logits")


def register(subparsers: Any) -> None:
    detect = subparsers.add_parser(
        "detect",
        help="identify an HF folder, GGUF file or cached repo id (prints JSON)",
        description="Identify a model source and say whether llorch can convert/serve it.",
    )
    detect.add_argument("path", help="HF folder, .gguf file, or repo id in the local HF cache")
    detect.set_defaults(func=run_detect)

    conv = subparsers.add_parser(
        "convert",
        help="convert an HF SafeTensors folder to GGUF",
        description="Convert an HF SafeTensors checkpoint to GGUF and verify its tokenizer.",
    )
    conv.add_argument("src", help="HF folder or repo id in the local HF cache")
    conv.add_argument(
        "-o", "--output", help="output file or folder (default: <name>-<size>-<type>.gguf here)"
    )
    conv.add_argument(
        "--outtype",
        default="f16",
        help="f32, f16, bf16, q8_0 (written directly) or a llama.cpp quantization type "
        "such as q4_k_m, q5_k_m, q6_k, q4_0, iq4_xs (default: f16)",
    )
    conv.add_argument(
        "--pre", metavar="NAME", help="llama.cpp pre-tokenizer name, when not recognized"
    )
    conv.add_argument(
        "--no-verify", action="store_true", help="skip tokenizer verification (not recommended)"
    )
    conv.add_argument(
        "--verify",
        choices=VERIFY_CHOICES,
        default="tokenizer",
        help="tokenizer (default), or logits: also compare llama.cpp's logits on a short "
        "prompt with transformers' (needs torch and transformers)",
    )
    conv.add_argument(
        "--imatrix",
        metavar="FILE|CALIB.txt",
        help="importance matrix for the quantizer: a file (llama.cpp's .imatrix.gguf or legacy "
        ".dat) or a calibration text to compute it from; needed by iq1_*, iq2_*, iq3_xxs, "
        "iq3_xs and q2_k_s",
    )
    conv.add_argument(
        "--imatrix-chunk", type=int, default=512, help="tokens per calibration chunk (512)"
    )
    conv.add_argument("--imatrix-chunks", type=int, help="at most this many calibration chunks")
    conv.add_argument(
        "--tensor-type",
        action="append",
        default=[],
        metavar="REGEX=TYPE",
        help="quantize tensors whose name matches REGEX to TYPE (llama-quantize's "
        "--tensor-type, e.g. ffn_down=q6_k); repeatable",
    )
    conv.add_argument(
        "--quality",
        metavar="EVAL.txt",
        help="measure the quantized output against the F16/BF16 it is made from on this text: "
        "KL divergence (mean, 99th percentile), top-1 agreement, perplexity of both",
    )
    conv.add_argument(
        "--quality-chunk", type=int, default=512, help="tokens per evaluation chunk (512)"
    )
    conv.add_argument("--quality-chunks", type=int, help="at most this many evaluation chunks")
    conv.add_argument(
        "--no-mmproj",
        action="store_true",
        help="a multimodal checkpoint: write the text part only, not its projector "
        "(<output stem>-mmproj-<f16|f32>.gguf, llama.cpp's mtmd)",
    )
    conv.add_argument("--force", action="store_true", help="replace the output file if it exists")
    conv.add_argument("--json", action="store_true", help="print the report as JSON")
    conv.set_defaults(func=run_convert)

    from llorch.convert.batch.cli import register as register_batch
    from llorch.convert.imatrix_cli import register as register_imatrix
    from llorch.convert.lora_cli import register as register_lora

    register_batch(subparsers)
    register_lora(subparsers)
    register_imatrix(subparsers)


def run_detect(args: argparse.Namespace) -> int:
    from llorch.detector import detect

    try:
        det = detect(args.path)
    except MODEL_ERRORS as exc:
        return fail("detect", exc, as_json=True)
    print(json.dumps(det.to_json(), indent=2))
    return 0 if det.supported else 1


def run_convert(args: argparse.Namespace) -> int:
    from llorch.convert.api import convert

    bar: Any = None
    progress = sys.stderr.isatty() and not args.json

    def on_plan(n: int) -> None:
        nonlocal bar
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, unit="tensor", desc="converting", file=sys.stderr)

    def on_tensor(plan: Any) -> None:
        if bar is not None:
            bar.set_postfix_str(plan.name, refresh=False)
            bar.update(1)

    if args.no_verify and args.verify == "logits":
        print("llorch convert: error: --no-verify and --verify logits contradict", file=sys.stderr)
        return 2
    if args.no_verify:
        print(
            "llorch convert: WARNING: --no-verify: the tokenizer is NOT checked against the "
            "source; a wrong pre-tokenizer would go unnoticed",
            file=sys.stderr,
        )
    try:
        with sigterm_unwinds():
            report = convert(
                args.src,
                args.output,
                outtype=args.outtype,
                verify=not args.no_verify,
                pre=args.pre,
                overwrite=args.force,
                on_tensor=on_tensor,
                on_plan=on_plan,
                check_logits=args.verify == "logits",
                imatrix=args.imatrix,
                imatrix_chunk=args.imatrix_chunk,
                imatrix_chunks=args.imatrix_chunks,
                tensor_types=args.tensor_type,
                quality=args.quality,
                quality_chunk=args.quality_chunk,
                quality_chunks=args.quality_chunks,
                mmproj=not args.no_mmproj,
            )
    except OutputExistsError as exc:
        return fail("convert", OutputExistsError(exc.path, "--force"), as_json=args.json)
    except MODEL_ERRORS as exc:
        return fail("convert", exc, as_json=args.json)
    except (KeyboardInterrupt, Terminated) as exc:
        return interrupted("convert", exc, "no output written")
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        verified = (
            f"tokenizer verified on {report.verify_strings} strings"
            if report.verified
            else "tokenizer NOT verified"
        )
        print(
            f"{report.output}: {report.llama_arch} {report.outtype}, {report.n_tensors} tensors, "
            f"{report.bytes / 1e6:.1f} MB in {report.seconds:.1f}s; {verified}"
        )
        if report.mmproj is not None:
            mm = report.mmproj
            print(
                f"{mm['output']}: projector {mm['projector_type']} {mm['outtype']}, "
                f"{mm['n_tensors']} tensors, {mm['bytes'] / 1e6:.1f} MB"
            )
        if report.logits is not None:
            lg = report.logits
            print(
                f"logits vs {lg['reference']}: cosine min {lg['cosine_min']:.6f}, top-1 "
                f"agreement {lg['top1_agreement']:.0%} over {lg['tokens']} positions"
            )
        if report.imatrix is not None:
            im = report.imatrix
            print(
                f"imatrix {im['file']}: {im['entries']} entries, {im['chunks']} chunks of "
                f"{im['chunk_size']} tokens"
            )
        if report.quality is not None:
            q = report.quality
            print(
                f"quality vs {q['reference']} over {q['tokens']} tokens: KLD mean "
                f"{q['kld_mean']:.6f}, p99 {q['kld_p99']:.6f}, top-1 {q['top1']:.2%}, "
                f"PPL {q['ppl']:.4f} (reference {q['ppl_reference']:.4f})"
            )
        for note in report.notes:
            print(f"note: {note}")
    return 0
