"""Server-sent events framing: one `data:` line of compact JSON per event."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import StreamingResponse


def frame(event: dict[str, Any]) -> bytes:
    # Compact JSON never contains a raw newline (json.dumps escapes it), so one data line
    # always suffices; ensure_ascii=False keeps the UTF-8 text as it is.
    return (
        b"data: " + json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    )


# No caching, and no buffering by proxies (nginx honours X-Accel-Buffering): tokens must
# reach the client as they are made.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStream(StreamingResponse):
    """A server-sent event stream (documented as such in the OpenAPI document)."""

    media_type = "text/event-stream"
