"""`llorch rpc-server` processes on loopback for the tests, each stopped by the test that
started it."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from support import free_port

from llorch.worker.backend import rpc


@dataclass
class RpcServerProcess:
    process: subprocess.Popen[bytes]
    endpoint: str
    log: Path

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_rpc_server(tmp: Path, *args: str, ready_timeout: float = 60.0) -> RpcServerProcess:
    """`llorch rpc-server` on a free loopback port, waited for until it answers the handshake."""
    port = free_port()
    log = tmp / f"rpc-server-{port}.log"
    cmd = [sys.executable, "-m", "llorch.cli", "rpc-server", "--port", str(port), *args]
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    server = RpcServerProcess(process, f"127.0.0.1:{port}", log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"rpc-server exited with {process.returncode}:\n{server.output()}")
        try:
            rpc.probe(rpc.parse_endpoint(server.endpoint), timeout=5.0)
            return server
        except rpc.RpcError:
            time.sleep(0.1)
    server.stop()
    raise AssertionError(f"rpc-server not answering after {ready_timeout}s:\n{server.output()}")


def dead_endpoint() -> str:
    """A loopback HOST:PORT nothing listens on."""
    return f"127.0.0.1:{free_port()}"
