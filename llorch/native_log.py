"""llama.cpp's log: one callback for the whole process.

llama.cpp keeps a single log callback per process, so the converter and the worker share this
one instead of each installing its own (the later one would silence the other's error
capture). Every line goes to the `llorch.llama_cpp` logger (errors at ERROR, the rest at
DEBUG: loading a model alone logs over a thousand lines) and the recent text is kept, so a
failure can quote llama.cpp's own words. The logger has a NullHandler: a program that
configures no logging (the converter's CLI, whose --json output must stay clean) prints
nothing. LLORCH_LLAMA_LOG=1 also echoes the raw log to stderr.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("llorch.llama_cpp")
log.addHandler(logging.NullHandler())
# Only llama.cpp's errors pass unless a user asks for more (`llorch serve --verbose`: its load
# lines, KV cache size, buffers and chosen types are at info).
log.setLevel(logging.ERROR)
# ggml_log_level (ggml.h): 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_last = [logging.DEBUG]  # the level a continuation fragment takes
_recent: deque[str] = deque(maxlen=64)  # raw fragments; a line may come in several
_callback: Any = None  # kept referenced: llama.cpp holds the pointer
# capture(): thread id -> the open blocks' lists, each getting every fragment that thread
# logs while its block runs (blocks nest: a load inside a caller's capture feeds both)
_captures: dict[int, list[list[str]]] = {}


def install() -> None:
    """Installs the callback, once per process (llama_cpp must be importable)."""
    global _callback
    if _callback is not None:
        return
    import llama_cpp

    echo = os.environ.get("LLORCH_LLAMA_LOG") == "1"

    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        del user_data
        fragment = text.decode("utf-8", "replace")
        _recent.append(fragment)
        for captured in _captures.get(threading.get_ident(), ()):
            captured.append(fragment)
        if echo:
            sys.stderr.write(fragment)
        line = fragment.rstrip()
        if line:
            _last[0] = _LEVELS.get(level, _last[0])
            log.log(_last[0], "%s", line)

    _callback = llama_cpp.llama_log_callback(forward)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def show(level: int) -> None:
    """Pass llama.cpp's own lines from `level` up (logging's levels) to the handlers."""
    log.setLevel(level)


def clear() -> None:
    """Forget what was logged so far: call before the operation whose failure to explain."""
    _recent.clear()


@contextmanager
def capture() -> Iterator[list[str]]:
    """Every fragment llama.cpp logs from this thread while the block runs (its lines about
    what it allocated, which llama.h has no call for); other threads' loads stay out."""
    fragments: list[str] = []
    ident = threading.get_ident()
    _captures.setdefault(ident, []).append(fragments)
    try:
        yield fragments
    finally:
        blocks = _captures[ident]
        # by identity: two blocks may hold equal lists
        del blocks[next(i for i, b in enumerate(blocks) if b is fragments)]
        if not blocks:
            del _captures[ident]


def last_error() -> str:
    """The last line since clear() that names an error ("error ...", "missing ..."), or "":
    llama.cpp's last line is often a bare "failed to load model" after the one that says
    why."""
    lines = "".join(_recent).splitlines()
    errors = [line.strip() for line in lines if "error" in line.lower() or "missing" in line]
    return errors[-1] if errors else ""
