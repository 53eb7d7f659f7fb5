"""llama.cpp's one-time set-up, shared by the converter and the worker: its log callback
(llorch.native_log) and llama_backend_init. A process that both converts and serves (`llorch
serve` of a Hugging Face folder) sets llama.cpp up once, whichever of the two comes first.
"""

from __future__ import annotations

import threading
from typing import Any

from llorch import native_log

_lock = threading.Lock()
_initialised = False


def init_llama_cpp() -> Any:
    """The llama_cpp module, set up on the first call. Imported here rather than at the top,
    so that importing a caller (the converter) does not load llama.cpp's libraries."""
    global _initialised
    import llama_cpp

    if not _initialised:
        with _lock:  # the worker's model threads and a conversion may start at once
            if not _initialised:
                native_log.install()
                llama_cpp.llama_backend_init()
                _initialised = True
    return llama_cpp
