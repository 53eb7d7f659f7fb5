"""file_sha256(path): a file's content digest, remembered across processes by file identity.

Hashing a multi-GB GGUF or safetensors file takes seconds to minutes, and the worker (the
default model's check, /health) and the converter cache (its key) both need digests on every
start. A digest is remembered by (resolved path, size, mtime_ns, inode), in memory and in
`digests.json` in llorch's cache folder; any change to those four hashes the file again.
A memo that cannot be read is rebuilt; one that cannot be written only costs a rehash later.

In a Hugging Face cache snapshot, large (LFS) files are links to blobs named by the sha256 of
their content, so the name is the digest and the file is not read at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

MEMO_NAME = "digests.json"
_BLOCK = 1 << 22
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

_Identity = tuple[str, int, int, int]
_memory: dict[_Identity, str] = {}
_lock = threading.Lock()


def cache_home() -> Path:
    """llorch's cache folder: `~/.cache/llorch`, or the folder holding `$LLORCH_CACHE` (which
    names the converted-GGUF folder, `~/.cache/llorch/gguf` by default)."""
    env = os.environ.get("LLORCH_CACHE")
    if env:
        return Path(env).expanduser().absolute().parent
    return Path.home() / ".cache" / "llorch"


def memo_path() -> Path:
    return cache_home() / MEMO_NAME


def _hf_blob_digest(path: Path) -> str | None:
    """The sha256 an HF cache blob is named by, when `path` is a link to one."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    # Git-stored small files are named by their git sha1 (40 hex), which is not a sha256.
    if target.parent.name == "blobs" and _SHA256_HEX.fullmatch(target.name):
        return target.name
    return None


def _identity(path: Path) -> _Identity:
    resolved = path.resolve()
    st = resolved.stat()
    return (str(resolved), st.st_size, st.st_mtime_ns, st.st_ino)


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _load(memo: Path) -> dict[str, list[object]]:
    try:
        data = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}  # missing or damaged: rebuilt as files are hashed
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 4}


def _remembered(memo: Path, ident: _Identity) -> str | None:
    entry = _load(memo).get(ident[0])
    if entry is not None and tuple(entry[:3]) == ident[1:] and isinstance(entry[3], str):
        return entry[3]
    return None


@contextlib.contextmanager
def _merge_lock(memo: Path) -> Iterator[None]:
    memo.parent.mkdir(parents=True, exist_ok=True)
    # The folder itself is locked: the memo is replaced by renames, and no lock file is left.
    fd = os.open(memo.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if this process dies
        yield
    finally:
        os.close(fd)


def _remember(memo: Path, ident: _Identity, digest: str) -> None:
    """Merge one entry into the memo on disk: re-read, update, write to a temp file, rename.
    Entries of files that no longer exist are dropped so the memo does not grow forever.
    The merge holds an flock: processes hashing at the same time (parallel conversion jobs)
    would otherwise each write back what they read, losing the other's entries."""
    with contextlib.suppress(OSError), _merge_lock(memo):
        entries = {k: v for k, v in _load(memo).items() if os.path.exists(k)}
        entries[ident[0]] = [*ident[1:], digest]
        memo.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{memo.name}.", suffix=".tmp", dir=memo.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(entries, fh)
            os.replace(tmp, memo)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of the file's content (hex), read only when its identity is new."""
    path = Path(path)
    blob = _hf_blob_digest(path)
    if blob is not None:
        return blob
    ident = _identity(path)
    with _lock:
        known = _memory.get(ident)
    if known is not None:
        return known
    memo = memo_path()
    digest = _remembered(memo, ident)
    if digest is None:
        digest = _hash(Path(ident[0]))
        # The identity is taken again: a file written while it was hashed is not remembered
        # under a digest of content it no longer has.
        if _identity(path) == ident:
            _remember(memo, ident, digest)
    with _lock:
        _memory[ident] = digest
    return digest
