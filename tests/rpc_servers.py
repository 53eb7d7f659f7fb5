"""`llorch rpc-server` processes on loopback for the tests, each stopped by the test that
started it."""

from __future__ import annotations

from pathlib import Path

from support import LoggedProcess, free_port, launch

from llorch.worker.backend import rpc


class RpcServerProcess(LoggedProcess):
    @property
    def endpoint(self) -> str:
        return self.address


def _answers(server: LoggedProcess) -> bool:
    try:
        rpc.probe(rpc.parse_endpoint(server.address), timeout=5.0)
    except rpc.RpcError:
        return False
    return True


def start_rpc_server(tmp: Path, *args: str, ready_timeout: float = 60.0) -> RpcServerProcess:
    """`llorch rpc-server` on a free loopback port, waited for until it answers the handshake."""
    port = free_port()
    launched = launch(tmp, "rpc-server", args, f"127.0.0.1:{port}", port, _answers, ready_timeout)
    return RpcServerProcess(launched.process, launched.address, launched.log)


def dead_endpoint() -> str:
    """A loopback HOST:PORT nothing listens on."""
    return f"127.0.0.1:{free_port()}"
