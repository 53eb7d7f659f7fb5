"""Temporary files next to a destination, renamed into place on success and never left behind.

`temp_path(dst)` yields a fresh file in dst's folder (same filesystem, so the rename is atomic)
and removes it when the block ends, whatever the reason, unless it was renamed. A `finally`
is not enough on its own: a daemon thread (the worker loads its model on one) is stopped at
interpreter exit without unwinding, so every open temporary is also in a registry that an
`atexit` hook empties. A signal whose default action kills the process runs neither: `llorch
convert` turns SIGTERM into an exception, and `llorch serve` drains and exits normally on it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

_open: set[Path] = set()
_lock = threading.Lock()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@atexit.register
def remove_open_temporaries() -> None:
    """Remove every temporary still open: the process is exiting in the middle of a write."""
    with _lock:
        leftover = list(_open)
        _open.clear()
    for path in leftover:
        with contextlib.suppress(OSError):
            _remove(path)


def _create(dst: Path, suffix: str) -> Path:
    """A new empty file next to dst, registered *before* it exists: whatever interrupts after
    it was created (a signal raised as an exception included), the exit hook knows its name."""
    folder = dst.parent.absolute()  # the exit hook may run after a change of folder
    for _ in range(100):
        path = folder / f".{dst.name}.{secrets.token_hex(6)}{suffix}"
        with _lock:
            _open.add(path)
        try:
            # O_EXCL: never someone else's file. 0o666 less the umask: a normal file.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            with _lock:
                _open.discard(path)
        except BaseException:
            with _lock:
                _open.discard(path)
            _remove(path)  # not another's: O_EXCL would have raised FileExistsError
            raise
    raise FileExistsError(f"{folder}: no free temporary name for {dst.name}")


@contextlib.contextmanager
def temp_path(dst: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """An empty file `.<dst name>.<random><suffix>` next to dst, removed when the block ends
    unless it has been renamed away. Raises OSError when the folder cannot be written."""
    path = _create(dst, suffix)
    try:
        yield path
    finally:
        with _lock:
            _open.discard(path)
        _remove(path)


@contextlib.contextmanager
def atomic_output(dst: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Write to the yielded temporary; when the block succeeds it replaces dst in one rename,
    and when it fails dst is as it was."""
    with temp_path(dst, suffix) as tmp:
        yield tmp
        os.replace(tmp, dst)
