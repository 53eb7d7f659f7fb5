"""cached_gguf(source): convert once into a cache folder keyed by the source files and options.

The key hashes every file conversion reads (config, tokenizer files, weights) by content, plus
the options and the converter version. Digests come from llorch.digests: a Hugging Face cache
blob's name, or a digest remembered by file identity, so a restart does not rehash unchanged
weights; any change to a file's size, mtime or inode rehashes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from llorch.convert.api import DEFAULT_OUTTYPE, convert
from llorch.convert.errors import ConversionCancelled
from llorch.convert.projector import is_projector
from llorch.detector import detect
from llorch.digests import cache_home, file_sha256

CONVERTER_VERSION = "3"  # 2: eos lists into eot/eom; 3: FIM token ids
_READ = (
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "sentencepiece.bpe.model",  # XLM-RoBERTa's, read where there is no tokenizer.json
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "model.safetensors.index.json",
    # a multimodal checkpoint's projector: image size, mean/std, tokens (convert/projector.py)
    "preprocessor_config.json",
    "processor_config.json",
)


def cache_root() -> Path:
    env = os.environ.get("LLORCH_CACHE")
    return Path(env).expanduser() if env else cache_home() / "gguf"


def source_key(folder: Path, options: dict[str, object]) -> str:
    files = sorted({p for p in folder.glob("*.safetensors")} | {folder / n for n in _READ})
    entries = {p.name: file_sha256(p) for p in files if p.is_file()}
    blob = json.dumps(
        {"files": entries, "options": options, "version": CONVERTER_VERSION}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_gguf(
    source: str | os.PathLike[str],
    *,
    outtype: str = DEFAULT_OUTTYPE,
    verify: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    stopping: Callable[[], bool] | None = None,
) -> Path:
    """The GGUF for an HF folder or cached repo id, converting on first use.

    GGUF files are returned as they are. Raises llorch.detector.DetectionError or
    convert.ConversionError subclasses (convert.MODEL_ERRORS) with a message naming the file.
    `stopping`: checked after each tensor; when it answers True the conversion ends with
    ConversionCancelled and leaves no file (a worker asked to stop while converting).
    """
    det = detect(source)
    if det.format == "gguf":
        return det.path
    options: dict[str, object] = {"outtype": outtype.lower()}
    folder = Path(cache_dir) if cache_dir is not None else cache_root()
    key = source_key(det.path, options)
    target_dir = folder / key
    # the text part; a multimodal checkpoint's projector lies beside it (convert/projector.py)
    found = sorted(target_dir.glob("*.gguf")) if target_dir.is_dir() else []
    existing = [p for p in found if not is_projector(p)]
    if existing:
        return existing[0]
    target_dir.mkdir(parents=True, exist_ok=True)

    def check(_: object) -> None:
        if stopping is not None and stopping():
            raise ConversionCancelled(f"{det.path}: conversion stopped: the worker is stopping")

    try:
        # The detection is passed on: the folder's config and headers are read once. An
        # entry of this key is the cache's own file, so it may be replaced.
        report = convert(
            det, target_dir, outtype=outtype, verify=verify, overwrite=True, on_tensor=check
        )
        if stopping is not None and stopping():  # asked during the last steps (verification)
            Path(report.output).unlink(missing_ok=True)
            if report.mmproj is not None:
                Path(report.mmproj["output"]).unlink(missing_ok=True)
            check(None)
    except BaseException:
        with contextlib.suppress(OSError):
            target_dir.rmdir()  # only if empty: a concurrent success stays
        raise
    return Path(report.output)


def cached_projector(text: Path, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The projector that converting a multimodal checkpoint wrote beside `text`, a GGUF that
    cached_gguf returned; None for a text-only model, and for a GGUF outside the cache (one
    returned as it was given: what lies beside it is not known to be its projector)."""
    folder = Path(cache_dir) if cache_dir is not None else cache_root()
    if text.parent.parent.resolve() != folder.resolve() or is_projector(text):
        return None
    return next((p for p in sorted(text.parent.glob("*.gguf")) if is_projector(p)), None)
