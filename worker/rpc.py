"""`llorch rpc-server`: this machine's CPU or GPUs served to workers on other machines, through
llama.cpp's own RPC server (ggml_backend_rpc_start_server), so no separate binary is built.

ggml's protocol has no authentication and no encryption: whoever reaches the port can
allocate memory and run graphs on the served devices and read what they hold. The server
therefore binds loopback unless told otherwise explicitly.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llorch.cpus import default_threads
from llorch.worker.backend import rpc

DEFAULT_HOST = "127.0.0.1"
# ggml-backend.h: enum ggml_backend_dev_type
_DEV_CPU, _DEV_ACCEL = 0, 3
NO_AUTH_WARNING = (
    "WARNING: the RPC protocol has no authentication and no encryption: anyone who can reach "
    "{endpoint} can use the served devices and read their memory. Expose it only on a network "
    "you trust (a private link, a firewall that admits only the workers)."
)


class RpcServeError(Exception):
    """The rpc server cannot start as asked (bad host, unknown device, port taken) or ggml's
    server stopped."""


@dataclass(frozen=True)
class ServedDevice:
    handle: int
    name: str
    description: str
    memory_total_bytes: int


def check_host(host: str, allow_remote: bool) -> None:
    """ggml's server binds an IPv4 address given as digits (inet_addr); a non-loopback one
    must be asked for with allow_remote."""
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise RpcServeError(
            f"--host {host!r}: the rpc server listens on an IPv4 address (e.g. 127.0.0.1, "
            "0.0.0.0, 192.168.1.20), not a host name"
        ) from None
    if not address.is_loopback and not allow_remote:
        raise RpcServeError(
            f"refusing to listen on {host}: the RPC protocol has no authentication, so anyone "
            "who can reach the port could use this machine's devices. Pass --allow-remote to "
            "do it anyway, on a network you trust."
        )


def remote_warning(endpoint: str) -> str | None:
    """What to tell the operator before listening on `endpoint` (HOST:PORT): nothing on
    loopback, the missing authentication anywhere else."""
    host = endpoint.rsplit(":", 1)[0]
    if ipaddress.IPv4Address(host).is_loopback:
        return None
    return NO_AUTH_WARNING.format(endpoint=endpoint)


def served_devices(names: Sequence[str] = ()) -> list[ServedDevice]:
    """The named ggml devices; by default every GPU, else the CPU (as llama.cpp's rpc-server
    chooses)."""
    lib = rpc.ggml()
    every = [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())]

    def name_of(dev: int) -> str:
        return (lib.ggml_backend_dev_name(dev) or b"").decode()

    if names:
        chosen = []
        for name in names:
            dev = lib.ggml_backend_dev_by_name(name.encode())
            if not dev:
                known = ", ".join(name_of(d) for d in every)
                raise RpcServeError(f"--device {name!r}: no such device; this machine has {known}")
            chosen.append(dev)
    else:
        kinds = {dev: lib.ggml_backend_dev_type(dev) for dev in every}
        chosen = [d for d in every if kinds[d] not in (_DEV_CPU, _DEV_ACCEL)]
        chosen = chosen or [d for d in every if kinds[d] == _DEV_CPU][:1]
    found = []
    for dev in chosen:
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        description = (lib.ggml_backend_dev_description(dev) or b"").decode()
        found.append(ServedDevice(dev, name_of(dev), description, total.value))
    return found


def _check_port_free(host: str, port: int) -> None:
    # ggml reports a failed bind only as "Failed to create server socket" on stderr; bind
    # here first (with SO_REUSEADDR, as ggml does) to say why.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise RpcServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def serve_rpc(
    host: str = DEFAULT_HOST,
    port: int = rpc.DEFAULT_PORT,
    *,
    threads: int | None = None,
    devices: Sequence[str] = (),
    allow_remote: bool = False,
    stop: threading.Event | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve this machine's devices over llama.cpp's RPC protocol on host:port until `stop` is
    set. Raises RpcServeError when it cannot start or ggml's server stops on its own.

    ggml's server has no way to be stopped: after `stop` it keeps listening until the process
    exits, so call this from a process that ends afterwards (as `llorch rpc-server` does)."""
    if not 1 <= port <= 65535:
        raise RpcServeError(f"--port {port}: must be from 1 to 65535")
    check_host(host, allow_remote)
    if threads is not None and threads < 1:
        raise RpcServeError(f"--threads {threads}: must be at least 1")
    start_server = rpc.rpc_function("ggml_backend_rpc_start_server", rpc.START_SERVER)
    chosen = served_devices(devices)
    _check_port_free(host, port)
    if threads is None:
        threads = default_threads()
    endpoint = f"{host}:{port}"
    warning = remote_warning(endpoint)
    if warning is not None:
        announce(warning)
    for dev in chosen:
        memory = f", {dev.memory_total_bytes / 2**30:.1f} GiB" if dev.memory_total_bytes else ""
        announce(f"serving {dev.name} ({dev.description}{memory}) on {endpoint}")
    handles = (ctypes.c_void_p * len(chosen))(*(d.handle for d in chosen))
    # The server loops forever in C; a thread of its own keeps this one free for signals.
    server = threading.Thread(
        target=start_server,
        args=(endpoint.encode(), None, threads, len(chosen), handles),
        name="llorch-rpc-server",
        daemon=True,
    )
    server.start()
    stop = stop or threading.Event()
    while not stop.wait(0.2):
        if not server.is_alive():
            raise RpcServeError(f"ggml's rpc server on {endpoint} stopped; see its messages above")
