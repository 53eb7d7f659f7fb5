"""What the converter's commands share (`llorch detect`, `convert`, `convert-lora`,
`convert-batch` and the batch's job processes): SIGTERM unwinding like Ctrl-C, and how a
command ends on an error (exit 2) or an interruption (130 Ctrl-C, 143 SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so that no `except Exception`
    stops it on its way out through the `finally` blocks that remove temporary files."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM's default action ends the process on the spot, leaving temporary files behind;
    raised as an exception instead, it unwinds through their clean-up first."""

    def raise_terminated(signum: int, frame: Any) -> None:
        del frame
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fail(command: str, error: Exception | str, *, as_json: bool = False) -> int:
    """One line on stderr naming the problem, and with `as_json` the error as a JSON object on
    stdout (where the command's report would have been); exit status 2."""
    if as_json and isinstance(error, Exception):
        print(json.dumps({"error": str(error), "type": type(error).__name__}))
    print(f"llorch {command}: error: {error}", file=sys.stderr)
    return 2


def interrupted(command: str, signal_exc: BaseException, left: str) -> int:
    """Ctrl-C (KeyboardInterrupt) or SIGTERM (Terminated): one line on stderr saying what the
    interruption left; exit status 130 or 143, as a shell reports a process those signals end."""
    if isinstance(signal_exc, Terminated):
        print(f"llorch {command}: terminated; {left}", file=sys.stderr)
        return 128 + signal.SIGTERM
    print(f"llorch {command}: interrupted; {left}", file=sys.stderr)
    return 130
