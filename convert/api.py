"""Library entry point: convert(src, dst, outtype=..., verify=True) -> ConversionReport."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gguf

from llorch.convert import imatrix as imx
from llorch.convert import llamacpp, projector, verify_logits
from llorch.convert import quality as quality_mod
from llorch.convert import writer as gw
from llorch.convert.errors import (
    ConfigError,
    ConversionError,
    ImatrixError,
    MissingTensorError,
    MissingTokenizerError,
    OutputError,
    OutputExistsError,
    OutTypeError,
)
from llorch.convert.families import load_family, rope
from llorch.convert.families.base import ModelInput, PlannedTensor
from llorch.convert.tokenizer.gguf_vocab import write_vocab
from llorch.convert.tokenizer.hf_tokenizer import load_vocab
from llorch.convert.verify import TokenDifference, verify_tokenizer
from llorch.detector import Detection, detect, lookup, read_json, text_config
from llorch.detector.errors import InvalidFileError
from llorch.detector.safetensors import Checkpoint

DEFAULT_OUTTYPE = "f16"
LEFT_OUT = "text part only:"  # the note of a wrapper converted without its projector
DEFAULT_QUALITY_CHUNK = 512


@dataclass(frozen=True)
class ConversionReport:
    source: str
    output: str
    hf_architecture: str
    llama_arch: str
    outtype: str
    tokenizer: str
    pre_tokenizer: str | None
    n_tensors: int
    parameters: int
    bytes: int
    seconds: float
    verified: bool
    verify_strings: int
    notes: tuple[str, ...]
    # known tokenizer-library differences verification found and accepted (TokenDifference)
    verify_differences: tuple[dict[str, Any], ...] = ()
    # verify_logits.LogitsCheck as JSON, when logits verification was asked for
    logits: dict[str, Any] | None = None
    # the importance matrix quantized with (file or calibration text, entries, chunks)
    imatrix: dict[str, Any] | None = None
    # quality.Quality as JSON: the output measured against the F16/BF16 it was quantized from
    quality: dict[str, Any] | None = None
    # a multimodal checkpoint's projector file (convert/projector.py): output, projector_type,
    # outtype, n_tensors, parameters, bytes
    mmproj: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        out["verify_differences"] = list(self.verify_differences)
        return out


def _model_input(det: Detection) -> ModelInput:
    """The model as detection read it: config.json and the safetensors headers are not read
    again (a Detection built without them reads them here)."""
    if det.format != "hf-safetensors":
        raise InvalidFileError(f"{det.path}: already GGUF; nothing to convert")
    folder = det.path
    raw = det.config if det.config is not None else read_json(folder / "config.json")
    config = text_config(raw)
    if det.hf_architecture is None:
        raise InvalidFileError(f"{folder / 'config.json'}: no 'architectures' entry")
    row = lookup(det.hf_architecture)
    for key, why in row.unread_layouts:
        if key in raw:
            raise ConfigError(f"{folder / 'config.json'}: {why}")
    # Without headers, detection met a weights problem: reading them again raises it, typed.
    ckpt = det.checkpoint if det.checkpoint is not None else Checkpoint(folder)
    if det.tokenizer is None:
        raise MissingTokenizerError(
            f"{folder}: no tokenizer.model (SentencePiece), tokenizer.json or "
            "sentencepiece.bpe.model (XLM-RoBERTa) found"
        )
    n_vocab = config.get("vocab_size")
    if not isinstance(n_vocab, int):
        raise ConversionError(f"{folder / 'config.json'}: missing integer vocab_size")
    return ModelInput(folder, det.hf_architecture, row.arch, config, ckpt, n_vocab, row.text_part)


def _check_output_head(model: ModelInput, plans: list[PlannedTensor]) -> None:
    """llama.cpp silently reuses token_embd when output.weight is absent: only right if tied."""
    output = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT] + ".weight"
    if model.config.get("tie_word_embeddings") is False and all(p.name != output for p in plans):
        raise MissingTensorError(
            f"{model.folder}: config.json has tie_word_embeddings=false but the checkpoint has "
            "no lm_head.weight (the output projection)"
        )


def _left_out(model: ModelInput, vision: projector.ProjectorJob | None, asked: bool) -> list[str]:
    """A multimodal wrapper converted without its projector, or with one that does not hold
    every part beside the text part, says so: which parts are left out and why."""
    outside = [ref.name for ref in model.ckpt if model.text_name(ref.name) is None]
    if vision is not None:  # the parts the projector does not hold either
        used = {source for plan in vision.plans for source in plan.sources}
        rest = [name for name in outside if name not in used]
        if not rest:
            return []
        parts = ", ".join(sorted({".".join(name.split(".")[:2]) + ".*" for name in rest}))
        return [
            f"{len(rest)} tensors of {parts} left out: the projector llorch writes for this "
            "family does not hold them; llama.cpp's convert_hf_to_gguf.py --mmproj writes them"
        ]
    n = len(outside)
    if n == 0:
        return []
    why = (
        "--no-mmproj"
        if not asked and lookup(model.hf_architecture).towers
        else "llorch does not write this family's projector; llama.cpp's "
        "convert_hf_to_gguf.py --mmproj does"
    )
    return [f"{LEFT_OUT} {n} tensors of the vision/audio parts left out ({why})"]


def model_name(model: ModelInput) -> str:
    name = model.config.get("_name_or_path")
    if isinstance(name, str) and name and not name.startswith(("/", ".")):
        return name.rstrip("/").split("/")[-1]
    return model.folder.name if model.folder.name != "" else "model"


def default_output_name(model: ModelInput, outtype: str) -> str:
    """GGUF naming convention: <name>-<size>-<type>.gguf (gguf-py's naming_convention)."""
    size = gguf.size_label(model.ckpt.n_parameters(), 0, 0, 0)
    stem = gguf.naming_convention(model_name(model), None, None, None, size, outtype.upper())
    return f"{stem}.gguf"


def _output_path(model: ModelInput, dst: str | os.PathLike[str] | None, outtype: str) -> Path:
    out = Path(dst) if dst is not None else Path.cwd() / default_output_name(model, outtype)
    if out.is_dir():
        out = out / default_output_name(model, outtype)
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: output folder does not exist")
    return out


def _add_metadata(w: gguf.GGUFWriter, metadata: Mapping[str, str | Sequence[str]]) -> None:
    for key, value in metadata.items():
        w.kv_data[0].pop(key, None)  # replaced on purpose: no duplicate-key warning
        if isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, list(value))


def convert(
    src: str | os.PathLike[str] | Detection,
    dst: str | os.PathLike[str] | None = None,
    *,
    outtype: str = DEFAULT_OUTTYPE,
    verify: bool = True,
    pre: str | None = None,
    overwrite: bool = False,
    on_tensor: Callable[[PlannedTensor], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    metadata: Mapping[str, str | Sequence[str]] | None = None,
    check_logits: bool = False,
    imatrix: str | os.PathLike[str] | None = None,
    imatrix_chunk: int = imx.DEFAULT_CHUNK,
    imatrix_chunks: int | None = None,
    tensor_types: Sequence[str] = (),
    quality: str | os.PathLike[str] | None = None,
    quality_chunk: int = DEFAULT_QUALITY_CHUNK,
    quality_chunks: int | None = None,
    mmproj: bool = True,
) -> ConversionReport:
    """Convert an HF SafeTensors folder (or cached repo id) to GGUF.

    `src` may be what llorch.detector.detect returned for it, which is then not detected (nor
    its config and headers read) again. Every tensor is mapped before anything is written; the
    output appears at `dst` only after it has been written completely (and verified, unless
    verify=False). An existing output file raises OutputExistsError unless `overwrite`.
    `metadata`: GGUF keys (string or string-array values) written after the converter's own,
    replacing any of them (e.g. `general.name`); provenance, for batch conversion.
    `check_logits`: also compare llama.cpp's logits on the output with transformers' on the
    checkpoint (convert/verify_logits.py; needs torch and transformers).
    `imatrix`: an importance matrix for llama.cpp's quantizer, a file (llama.cpp's GGUF or
    legacy .dat) or a calibration text, computed (convert/imatrix.py, `imatrix_chunk` tokens a
    chunk, at most `imatrix_chunks`) on the F16/BF16 file the quantizer starts from.
    `tensor_types`: llama-quantize's --tensor-type, "REGEX=TYPE" each.
    `quality`: an evaluation text; the quantized output is measured against the F16/BF16 file
    it was made from (convert/quality.py: KL divergence, top-1 agreement, perplexities).
    `mmproj`: a multimodal checkpoint's projector is also written, beside the output
    (`<stem>-mmproj-<f16|f32>.gguf`, convert/projector.py), F16 or F32 whatever the outtype.
    """
    start = time.monotonic()
    outtype = gw.check_outtype(outtype)
    gw.check_imatrix(outtype, imatrix is not None)
    overrides = gw.parse_tensor_types(tensor_types)
    if (imatrix is not None or overrides) and outtype in gw.DIRECT:
        raise OutTypeError(
            f"outtype {outtype!r} is written directly, not by llama.cpp's quantizer: --imatrix "
            f"and --tensor-type apply to {', '.join(sorted(gw.quantizer_types()))}"
        )
    if quality is not None and outtype in gw.DIRECT:
        raise OutTypeError(
            f"--quality measures a quantized output against the F16/BF16 file it is made "
            f"from; outtype {outtype!r} is written directly (use convert-batch with f16 and "
            f"{outtype} to measure it)"
        )
    if quality is not None and not Path(quality).is_file():
        raise OutputError(f"{quality}: no such evaluation text file")
    if imatrix is not None and not Path(imatrix).is_file():
        raise ImatrixError(f"{imatrix}: no such imatrix or calibration text file")
    det = src if isinstance(src, Detection) else detect(src)
    model = _model_input(det)
    family = load_family(lookup(model.hf_architecture).family)
    out = _output_path(model, dst, outtype)
    if out.exists() and not overwrite:
        raise OutputExistsError(out)  # before the work, not after it
    vocab = load_vocab(model.folder, model.n_vocab, pre_override=pre, config=det.config)
    plans = family.plan(model)
    vision = (
        projector.prepare(det, projector.projector_path(out, outtype), outtype) if mmproj else None
    )
    if vision is not None and vision.out.exists() and not overwrite:
        raise OutputExistsError(vision.out)
    _check_output_head(model, plans)
    gw.check_prequantized(plans, outtype)
    if on_plan is not None:
        on_plan(len(plans))
    direct = outtype in gw.DIRECT
    stage_type = outtype if direct else ("bf16" if det.dtype == "BF16" else "f16")
    notes = list(vocab.notes)
    notes.extend(_left_out(model, vision, mmproj))
    mm_record = None
    with gw.temp_path(out) as tmp, projector.temp(vision) as mm_tmp:
        w = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[model.arch])
        w.add_name(model_name(model))
        w.add_size_label(gguf.size_label(model.ckpt.n_parameters(), 0, 0, 0))
        family.write_hparams(model, w)
        rope.check_written(model, w, {p.name for p in plans})
        w.add_file_type(gw.DIRECT[stage_type][1])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(vocab, w)
        _add_metadata(w, metadata or {})
        stats = gw.write_gguf(tmp, w, plans, stage_type, on_tensor=on_tensor)
        if vision is not None and mm_tmp is not None:
            mm_tensors = projector.write(vision, mm_tmp, model_name(model), metadata)
        final = tmp
        with gw.temp_path(out, ".quant.tmp") as qtmp:
            im_record = quality_record = None
            if not direct:
                options = llamacpp.QuantizeOptions(tensor_types=overrides)
                if imatrix is not None:
                    options, im_record = quant_options(
                        imatrix, tmp, overrides, chunk=imatrix_chunk, chunks=imatrix_chunks
                    )
                ftype = gw.quantizer_types()[outtype]
                if quality is None:
                    llamacpp.quantize(tmp, qtmp, ftype, options=options)
                else:
                    quality_record = quality_mod.quantize_measured(
                        tmp,
                        qtmp,
                        ftype,
                        options,
                        quality,
                        reference_name=stage_type,
                        chunk=quality_chunk,
                        chunks=quality_chunks,
                    ).to_json()
                final = qtmp
            if quality_record is None:  # else measuring it loaded it
                llamacpp.check_loads(final)  # cheap: metadata and tensor shapes, no weights read
            checked = 0
            differences: tuple[TokenDifference, ...] = ()
            if verify:
                result = verify_tokenizer(final, vocab)
                checked, differences = result.strings, result.differences
                notes.extend(d.note() for d in differences)
            else:
                notes.append("tokenizer verification skipped (--no-verify)")
            logits = None
            if check_logits:
                found = verify_logits.verify(final, model.folder, model.hf_architecture, outtype)
                logits = found.to_json()
            if out.exists() and not overwrite:
                raise OutputExistsError(out)  # it appeared while this conversion ran
            if vision is not None and mm_tmp is not None:
                projector.place(vision, mm_tmp)
                mm_record = projector.report(vision, mm_tensors)
            try:
                os.replace(final, out)
            except OSError as exc:
                raise OutputError(f"{out}: cannot move the finished file here ({exc})") from exc
    return ConversionReport(
        source=det.source,
        output=str(out),
        hf_architecture=model.hf_architecture,
        llama_arch=gguf.MODEL_ARCH_NAMES[model.arch],
        outtype=outtype,
        tokenizer=vocab.kind,
        pre_tokenizer=vocab.pre,
        n_tensors=stats.n_tensors,
        parameters=model.ckpt.n_parameters(),
        bytes=out.stat().st_size,
        seconds=round(time.monotonic() - start, 3),
        verified=verify,
        verify_strings=checked,
        notes=tuple(notes),
        verify_differences=tuple(d.to_json() for d in differences),
        logits=logits,
        imatrix=im_record,
        quality=quality_record,
        mmproj=mm_record,
    )


def quant_options(
    imatrix: str | os.PathLike[str],
    base: Path,
    tensor_types: tuple[tuple[str, int], ...] = (),
    **compute_kw: Any,
) -> tuple[llamacpp.QuantizeOptions, dict[str, Any]]:
    """The quantizer's options for an imatrix file or calibration text (computed on `base`),
    and its provenance record."""
    matrix, name = imx.resolve(imatrix, base, **compute_kw)
    record: dict[str, Any] = {
        "file": name,
        "computed": not imx.is_imatrix_file(Path(imatrix)),
        "sha256": imx.sha256(imatrix),
        "datasets": list(matrix.datasets),
        "entries": len(matrix.entries),
        "chunks": matrix.chunk_count,
        "chunk_size": matrix.chunk_size,
    }
    options = llamacpp.QuantizeOptions(
        imatrix=matrix.quantizer_data(),
        imatrix_file=name,
        imatrix_dataset=matrix.datasets[0] if matrix.datasets else None,
        imatrix_chunks=matrix.chunk_count,
        tensor_types=tensor_types,
    )
    return options, record
