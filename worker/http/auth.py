"""Token authentication for every route but the probes: `Authorization: Bearer <token>`, as
OpenAI's clients send it, or `x-api-key: <token>`, as Anthropic's do.

It is ASGI middleware rather than a per-route dependency so that it covers every route of the
app, including routers added later (/v1/...), the OpenAPI docs and unknown paths alike.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from llorch.worker.http.errors import Unauthorized, response_for

# Liveness and readiness probes come from supervisors that hold no token.
OPEN_PATHS = frozenset({"/health", "/ready"})


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class BearerAuth:
    def __init__(self, app: ASGIApp, token: SecretStr) -> None:
        self.app = app
        self._expected = token.get_secret_value().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = api_key = None
        for name, value in scope["headers"]:
            if name == b"authorization" and header is None:
                header = value.decode("latin-1")
            elif name == b"x-api-key" and api_key is None:
                api_key = value.decode("latin-1").strip() or None
        if not (self._accepts(bearer_token(header)) or self._accepts(api_key)):
            if header is None and api_key is None:
                message = "missing bearer token"
            else:
                message = "invalid bearer token" if header is not None else "invalid x-api-key"
            await response_for(Unauthorized(message), scope["path"])(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _accepts(self, token: str | None) -> bool:
        if token is None:
            return False
        # Constant time: the comparison must not leak how much of a guess was right.
        return hmac.compare_digest(token.encode(), self._expected)


def holds_token(authorization: str | None, expected: SecretStr | None) -> bool:
    """Whether a request may see what the token guards (always, when no token is set)."""
    if expected is None:
        return True
    token = bearer_token(authorization)
    return token is not None and hmac.compare_digest(
        token.encode(), expected.get_secret_value().encode()
    )
