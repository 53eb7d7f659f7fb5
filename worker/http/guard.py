"""What a request must be before any route reads it: for this worker (Host), from an allowed
page (Origin), JSON where JSON is expected (Content-Type), and not too large (the body).

A worker on loopback with no token is reachable from every web page its user opens: a page can
POST a "simple" request (`text/plain`, no preflight) or rebind its own domain name to
127.0.0.1. So a foreign Host is refused (DNS rebinding), a state-changing request from an
Origin not in `--cors-origins` is refused, and JSON routes take only `application/json`
(which a page cannot send cross-site without a preflight that CORS then refuses).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llorch.worker.backend.errors import WorkerError
from llorch.worker.http.errors import response_for
from llorch.worker.settings import WorkerSettings

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class MisdirectedRequest(WorkerError):
    code = "MISDIRECTED_REQUEST"
    status = 421


class ForbiddenOrigin(WorkerError):
    code = "FORBIDDEN_ORIGIN"
    status = 403


class UnsupportedMediaType(WorkerError):
    code = "UNSUPPORTED_MEDIA_TYPE"
    status = 415


class PayloadTooLarge(WorkerError):
    code = "PAYLOAD_TOO_LARGE"
    status = 413


def _host_name(host_header: str) -> str:
    """The name of a Host header, without its port (`[::1]:8080` → `::1`)."""
    return (urlsplit(f"//{host_header}").hostname or "").lower()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: WorkerSettings) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.origins = frozenset(settings.cors_origin_list)
        allowed = {name.lower() for name in settings.allowed_host_list}
        # Names a legitimate client uses: loopback, the bound and advertised hosts, and the
        # machine's name (advertised for a wildcard bind). IP literals are always accepted:
        # rebinding needs a domain name, and an address in Host is what the client dialled.
        allowed |= _LOOPBACK_NAMES | {settings.host.strip("[]").lower(), socket.gethostname()}
        allowed.add(_host_name(settings.public_url.removeprefix("http://")))
        self.hosts = frozenset(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self._check(scope, headers)
        except WorkerError as exc:
            await response_for(exc, scope["path"])(scope, receive, send)
            return
        await self.app(scope, self._bounded(receive), send)

    def _check(self, scope: Scope, headers: dict[str, str]) -> None:
        host = _host_name(headers.get("host", ""))
        if "*" not in self.hosts and not _is_ip(host) and host not in self.hosts:
            raise MisdirectedRequest(
                f"this worker does not answer for host {host[:64]!r}; allowed: loopback, "
                "its own addresses and names, and --allowed-hosts",
                param="Host",
            )
        method = scope["method"]
        origin = headers.get("origin")
        if (
            method in _STATE_CHANGING
            and origin is not None
            and "*" not in self.origins
            and origin not in self.origins
        ):
            raise ForbiddenOrigin(
                f"requests from the page at {origin[:64]!r} are not allowed (--cors-origins)",
                param="Origin",
            )
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        if method == "POST" and has_body:
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                raise UnsupportedMediaType(
                    f"the body must be JSON (Content-Type: application/json), got "
                    f"{media[:64] or 'no Content-Type'!r}",
                    param="Content-Type",
                )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise self._too_large(int(length))

    def _too_large(self, size: int | None) -> PayloadTooLarge:
        told = f"{size} bytes" if size is not None else "more"
        return PayloadTooLarge(
            f"the body is {told}; at most {self.max_body} bytes are accepted (--max-body-bytes)",
            constraint=f"<= {self.max_body} bytes",
        )

    def _bounded(self, receive: Receive) -> Receive:
        """receive(), refusing a body that grows past the limit (no Content-Length)."""
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise self._too_large(None)
            return message

        return bounded
