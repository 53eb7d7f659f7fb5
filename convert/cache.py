"""cached_gguf(source): convert once into a cache folder keyed by the source files and options.

The key hashes every file conversion reads (config, tokenizer files, weights) by content, plus
the options and the converter version. In a Hugging Face cache snapshot the files are links to
blobs named by their content hash, which is used instead of rereading multi-GB weights.
Elsewhere, digests are remembered in `<cache>/digests.json` by (path, size, mtime, inode), so
a restart does not rehash unchanged weights; any change to those rehashes the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from llorch.convert.api import DEFAULT_OUTTYPE, convert
from llorch.detector import detect

CONVERTER_VERSION = "2"  # 2: eos lists into eot/eom
_READ = (
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "model.safetensors.index.json",
)


def cache_root() -> Path:
    env = os.environ.get("LLORCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llorch" / "gguf"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _DigestMemo:
    """Content digests remembered by file identity; a damaged memo is simply rebuilt."""

    def __init__(self, root: Path) -> None:
        self.path = root / "digests.json"
        try:
            self.entries: dict[str, list[object]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def digest(self, path: Path) -> str:
        if path.is_symlink():
            target = Path(os.readlink(path)).name
            if len(target) in (40, 64) and all(c in "0123456789abcdef" for c in target):
                return "blob:" + target  # HF cache blobs are named by git/sha256 content hash
        st = path.stat()
        identity = [st.st_size, st.st_mtime_ns, st.st_ino]
        key = str(path.absolute())
        known = self.entries.get(key)
        if known is not None and known[:3] == identity:
            return str(known[3])
        value = _sha256(path)
        self.entries[key] = [*identity, value]
        self.changed = True
        return value

    def save(self) -> None:
        if not self.changed:
            return
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".digests.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.path)


def source_key(folder: Path, options: dict[str, object], memo: _DigestMemo) -> str:
    files = sorted({p for p in folder.glob("*.safetensors")} | {folder / n for n in _READ})
    entries = {p.name: memo.digest(p) for p in files if p.is_file()}
    memo.save()
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
) -> Path:
    """The GGUF for an HF folder or cached repo id, converting on first use.

    GGUF files are returned as they are. Raises llorch.detector.DetectionError or
    convert.ConversionError subclasses (convert.MODEL_ERRORS) with a message naming the file.
    """
    det = detect(source)
    if det.format == "gguf":
        return det.path
    options: dict[str, object] = {"outtype": outtype.lower()}
    folder = Path(cache_dir) if cache_dir is not None else cache_root()
    key = source_key(det.path, options, _DigestMemo(folder))
    target_dir = folder / key
    existing = sorted(target_dir.glob("*.gguf")) if target_dir.is_dir() else []
    if existing:
        return existing[0]
    target_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = convert(det.path, target_dir, outtype=outtype, verify=verify)
    except BaseException:
        with contextlib.suppress(OSError):
            target_dir.rmdir()  # only if empty: a concurrent success stays
        raise
    return Path(report.output)
