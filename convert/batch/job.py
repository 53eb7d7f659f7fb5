"""One batch job, run in its own process: a source converted once, then quantized.

The high-precision output (f32, bf16 or f16 as asked, preferred in that order, or a temporary
F16/BF16 intermediate when only quantized types are asked) is written by llorch's converter;
every other outtype is made from it by llama.cpp's quantizer, so the weights are read once.
Each output is renamed into place complete, then its provenance sidecar is written. A
multimodal checkpoint's projector (convert/projector.py) is one more output, `mmproj`, written
on its own from the checkpoint (F16, F32 beside an F32 base) as `<name>-<size>-mmproj-f16.gguf`.

Run as `python -m llorch.convert.batch.job SPEC_JSON`: events go out as JSON lines on the
original stdout (fd 1 is pointed at stderr, so stray native prints cannot corrupt them); when
stdin reaches end of file (the batch process died) the job stops as on SIGTERM, removing its
temporaries.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf

from llorch.convert import imatrix as imx
from llorch.convert import llamacpp, projector, quality, verify_logits
from llorch.convert import writer as gw
from llorch.convert.api import LEFT_OUT, convert, quant_options
from llorch.convert.batch import provenance
from llorch.convert.batch.plan import HIGH_PRECISION
from llorch.convert.errors import ConversionError
from llorch.convert.tokenizer.hf_tokenizer import load_vocab
from llorch.convert.verify import verify_tokenizer
from llorch.detector import Detection, detect, text_config
from llorch.digests import file_sha256

Emit = Callable[[dict[str, Any]], None]


def base_type(outtypes: list[str], dtype: str | None) -> tuple[str, bool]:
    """(type of the one conversion, whether it is itself an asked output)."""
    for t in HIGH_PRECISION:
        if t in outtypes:
            return t, True
    return ("bf16" if dtype == "BF16" else "f16"), False


def output_name(det: Detection, spec: dict[str, Any], outtype: str) -> str:
    """GGUF naming convention, through gguf-py's helper."""
    size = gguf.size_label(det.parameters or 0, 0, 0, 0)
    over = spec["overrides"]
    stem = gguf.naming_convention(
        model_name(det, spec),
        None,
        over.get("finetune"),
        over.get("version"),
        size,
        outtype.upper(),
    )
    return f"{stem}.gguf"


def model_name(det: Detection, spec: dict[str, Any]) -> str:
    if "name" in spec["overrides"]:
        return str(spec["overrides"]["name"])
    if spec["source"].get("repo_id"):  # a snapshot folder is named by its commit
        return str(spec["source"]["repo_id"]).split("/")[-1]
    name = (det.config or {}).get("_name_or_path")
    if isinstance(name, str) and name and not name.startswith(("/", ".")):
        return name.rstrip("/").split("/")[-1]
    return det.path.name


def _metadata(spec: dict[str, Any], name: str, files: dict[str, str]) -> dict[str, Any]:
    over = spec["overrides"]
    by = over.get("quantized_by") or f"llorch {provenance.versions()['llorch']}"
    meta: dict[str, Any] = {gguf.Keys.General.NAME: name}
    for key, gkey in (("finetune", "FINETUNE"), ("version", "VERSION"), ("license", "LICENSE")):
        if key in over:
            meta[getattr(gguf.Keys.General, gkey)] = over[key]
    return {**meta, **provenance.gguf_metadata(spec["source"], files, by)}


def _imatrix(
    spec: dict[str, Any], base: Path, base_type: str, files: dict[str, str], stem: str, emit: Emit
) -> tuple[llamacpp.QuantizeOptions, dict[str, Any]] | None:
    """The job's importance matrix: a given file read, or a calibration text computed once
    on the high-precision output and kept beside the outputs as `<stem>.imatrix.gguf` (reused
    by a rerun when made from the same text, chunk size, base type and source files)."""
    given = spec.get("imatrix")
    if given is None:
        return None
    path = Path(given)
    if imx.is_imatrix_file(path):
        return quant_options(path, base)
    chunk = int(spec.get("imatrix_chunk") or imx.DEFAULT_CHUNK)
    inputs = json.dumps(
        {"sha256": imx.sha256(path), "chunk": chunk, "base": base_type, "files": files},
        sort_keys=True,
    )
    kept = Path(spec["out_dir"]) / f"{stem}{imx.GGUF_SUFFIX}"
    matrix = None
    with contextlib.suppress(ConversionError, OSError, ValueError):
        found = imx.load(kept)
        matrix = found if found.inputs == inputs else None
    if matrix is None:
        emit({"event": "stage", "job": spec["id"], "stage": "imatrix"})
        partial = imx.partial_path(kept)  # a kill -9 mid-way continues from its last save
        matrix = imx.compute(
            base, path, chunk=chunk, n_threads=spec.get("threads", 0), partial=partial
        )
        matrix.datasets = [path.name]
        matrix.inputs = inputs
        imx.save(matrix, kept)
        partial.unlink(missing_ok=True)
        emit({"event": "imatrix", "job": spec["id"], "file": kept.name})
    options, record = quant_options(kept, base)
    record.update(file=kept.name, computed=True, calibration_sha256=imx.sha256(path))
    return options, record


def _finish(
    spec: dict[str, Any],
    outtype: str,
    out: Path,
    base: str,
    files: dict[str, str],
    verify: dict,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    record = {
        **(extra or {}),
        **provenance.expected(spec["id"], outtype, files, spec["options"]),
        "format": provenance.FORMAT,
        "file": out.name,
        "bytes": out.stat().st_size,
        "sha256": file_sha256(out),
        "from": None if outtype in (base, projector.MMPROJ) else base,
        "source": spec["source"],
        "verification": verify,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    provenance.write_sidecar(out, record)
    return record


def run(spec: dict[str, Any], emit: Emit) -> None:
    job, out_dir = spec["id"], Path(spec["out_dir"])
    det = detect(spec["source"]["folder"])
    files = provenance.source_files(det.path)
    outtypes: list[str] = spec["outtypes"]
    todo: list[str] = spec["todo"]
    base, asked = base_type(outtypes, det.dtype)
    name = model_name(det, spec)
    names = {t: output_name(det, spec, t) for t in {*outtypes, base}}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        current = out_dir / names[base]
        # A tokenizer check that holds for every quantized output: llama.cpp's quantizer copies
        # the high-precision file's metadata, vocabulary included, unchanged (llama-quant.cpp
        # copies every key but the file type), so it is checked once per job, not per type.
        checked: tuple[str, dict[str, Any]] | None = None
        if not (asked and base not in todo):  # else: the finished base output is reused
            dst = current if asked else stack.enter_context(gw.temp_path(current, ".base.tmp"))
            emit({"event": "stage", "job": job, "stage": f"convert {base}"})
            done = [0]

            def on_tensor(_: object) -> None:
                done[0] += 1
                emit({"event": "tensor", "job": job, "done": done[0]})

            mmproj = projector.has_projector(det.path)
            report = convert(
                det,
                dst,
                outtype=base,
                verify=spec["verify"],
                pre=spec["pre"],
                overwrite=True,
                on_plan=lambda n: emit({"event": "plan", "job": job, "tensors": n}),
                on_tensor=on_tensor,
                metadata=_metadata(spec, name, files),
                check_logits=spec.get("verify_logits", False),
                mmproj=False,  # written on its own, as the job's `mmproj` output
            )
            current = dst
            verified = {
                "tokenizer": report.verified,
                "strings": report.verify_strings,
                # the projector is this job's own output (`mmproj`), not left out
                "notes": [n for n in report.notes if not n.startswith(LEFT_OUT) or not mmproj],
                "differences": list(report.verify_differences),
            }
            if report.logits is not None:
                verified["logits"] = report.logits
            if report.verified:
                checked = (base, {k: v for k, v in verified.items() if k != "logits"})
            if asked:
                record = _finish(spec, base, dst, base, files, verified)
                emit({"event": "output", "job": job, "seconds": _since(started), **record})
        vocab = None
        quantized = [t for t in todo if t not in (base, projector.MMPROJ)]
        stem = output_name(det, spec, base).removesuffix(f"-{base.upper()}.gguf")
        if projector.MMPROJ in todo:
            _projector(spec, det, base, files, stem, emit)
        imatrix = _imatrix(spec, current, base, files, stem, emit) if quantized else None
        references = quality.ReferenceCache()  # the high-precision output's, for every type
        for outtype in quantized:
            emit({"event": "stage", "job": job, "stage": f"quantize {outtype}"})
            t0 = time.monotonic()
            final = out_dir / names[outtype]
            with gw.temp_path(final, ".quant.tmp") as tmp:
                ftype = llamacpp.ftype_constants()[outtype]
                options = imatrix[0] if imatrix is not None else llamacpp.QuantizeOptions()
                threads = spec.get("threads", 0)
                extra: dict[str, Any] = {}
                if imatrix is not None:
                    extra["imatrix"] = imatrix[1]
                if spec.get("quality"):
                    stage = {"event": "stage", "job": job, "stage": f"quality {outtype}"}
                    extra["quality"] = quality.quantize_measured(
                        current,
                        tmp,
                        ftype,
                        options,
                        spec["quality"],
                        reference_name=base,
                        chunk=int(spec.get("quality_chunk") or quality.DEFAULT_CHUNK),
                        n_threads=threads,
                        cache=references,
                        on_measure=functools.partial(emit, stage),
                    ).to_json()
                else:
                    llamacpp.quantize(current, tmp, ftype, n_threads=threads, options=options)
                    llamacpp.check_loads(tmp)  # measuring it would have loaded it
                verified = {"tokenizer": False, "strings": 0, "notes": ["not verified"]}
                if spec["verify"] and checked is not None:
                    first, record = checked
                    note = f"tokenizer checked in the {first} output: the quantizer copies it"
                    verified = {**record, "notes": [*record["notes"], note]}
                elif spec["verify"]:
                    if vocab is None:
                        n_vocab = int(text_config(det.config or {})["vocab_size"])
                        vocab = load_vocab(
                            det.path, n_vocab, pre_override=spec["pre"], config=det.config
                        )
                    result = verify_tokenizer(tmp, vocab)
                    verified = {
                        "tokenizer": True,
                        "strings": result.strings,
                        "notes": [d.note() for d in result.differences],
                        "differences": [d.to_json() for d in result.differences],
                    }
                    checked = (outtype, dict(verified))
                if spec.get("verify_logits"):
                    found = verify_logits.verify(tmp, det.path, str(det.hf_architecture), outtype)
                    verified["logits"] = found.to_json()
                os.replace(tmp, final)
            record = _finish(spec, outtype, final, base, files, verified, extra)
            emit({"event": "output", "job": job, "seconds": _since(t0), **record})


def _projector(
    spec: dict[str, Any], det: Detection, base: str, files: dict[str, str], stem: str, emit: Emit
) -> None:
    """The job's `mmproj` output, with the same provenance keys as its other outputs."""
    t0 = time.monotonic()
    emit({"event": "stage", "job": spec["id"], "stage": "convert mmproj"})
    ptype = projector.projector_type(base)
    out = Path(spec["out_dir"]) / f"{stem}-mmproj-{ptype}.gguf"
    name = model_name(det, spec)
    made = projector.convert_projector(det, out, base, name, _metadata(spec, name, files))
    checked = {"projector": made["projector_type"], "tensors": made["n_tensors"]}
    extra = {"projector_type": made["projector_type"], "projector_outtype": ptype}
    record = _finish(spec, projector.MMPROJ, out, base, files, checked, extra)
    emit({"event": "output", "job": spec["id"], "seconds": _since(t0), **record})


def _since(t0: float) -> float:
    return round(time.monotonic() - t0, 3)


def _stop_when_orphaned() -> None:
    """The batch keeps our stdin open; end of file means it is gone, so stop as on SIGTERM."""

    def watch() -> None:
        # The raw descriptor, not sys.stdin: a daemon thread blocked inside a buffered reader
        # holds its lock, and the interpreter aborts when it meets that lock at exit.
        while os.read(0, 1 << 12):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    from llorch.convert.cli_common import Terminated, sigterm_unwinds

    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    spec = json.loads(argv[0])

    def emit(event: dict[str, Any]) -> None:
        events.write(json.dumps(event) + "\n")

    _stop_when_orphaned()
    try:
        with sigterm_unwinds():
            run(spec, emit)
    except Terminated:
        return 128 + signal.SIGTERM
    except Exception as exc:  # the job's error, reported to the batch; the batch goes on
        emit({"event": "error", "job": spec["id"], "type": type(exc).__name__, "message": str(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
