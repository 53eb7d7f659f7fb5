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
import tempfile
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


def open_temporaries() -> list[Path]:
    with _lock:
        return sorted(_open)


def _umask() -> int:
    # Read by setting: there is no other portable way; set back at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def temp_path(dst: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """An empty file `.<dst name>.<random><suffix>` next to dst, removed when the block ends
    unless it has been renamed away. Raises OSError when the folder cannot be written."""
    fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=suffix, dir=dst.parent)
    os.close(fd)
    path = Path(name)
    with _lock:
        _open.add(path)
    try:
        os.chmod(path, 0o666 & ~_umask())  # mkstemp makes 0600; the result is a normal file
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
