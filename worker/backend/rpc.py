"""llama.cpp's RPC backend (ggml-rpc), reached through the ggml library: the devices of other
machines' `llorch rpc-server` as devices of this worker's model.

Two things ggml does not do for us. It aborts the whole process when an rpc server cannot be
reached or speaks another protocol version (GGML_ABORT in ggml-rpc.cpp), so every endpoint is
first probed here with the protocol's own handshake, and a dead one becomes a load error that
names it. And ggml_backend_register() would make remote devices global, so that every later
model of the process would use them by default; instead they are handed to the one model that
asked for them through llama_model_params.devices, as llama.cpp does with --device.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llorch.worker.backend.errors import ModelLoadError
from llorch.worker.backend.protocol import BackendInfo, Device

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default
PROBE_TIMEOUT_S = 10.0

# ggml/include/ggml-rpc.h and ggml/src/ggml-rpc of the llama.cpp that llama-cpp-python 0.3.36
# vendors: a server answers a client of the same major version and a minor version at least
# its own; anything else makes ggml abort.
RPC_PROTO_MAJOR = 7
RPC_PROTO_MINOR = 0
_CMD_HELLO = 14  # fixed across protocol versions (static_assert in ggml-rpc.cpp)
_CMD_DEVICE_COUNT = 15
_CONN_CAPS_SIZE = 24  # transport capabilities; all zero: plain TCP
_HELLO_REPLY = struct.Struct("<BBBB24s")
_SIZE = struct.Struct("<Q")
_COUNT = struct.Struct("<I")

# ggml-backend.h: enum ggml_backend_dev_type
_DEV_GPU, _DEV_IGPU = 1, 2


class RpcError(ModelLoadError):
    """An rpc server the worker was told to use cannot be used."""

    code = "RPC_UNAVAILABLE"

    def __init__(self, message: str, endpoint: str | None = None) -> None:
        super().__init__(message, param="rpc", value=endpoint)
        self.endpoint = endpoint


class TensorSplitError(ModelLoadError):
    """--tensor-split does not match the devices the model is split over."""

    code = "INVALID_TENSOR_SPLIT"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="tensor_split")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """`HOST:PORT`. ggml splits at the first colon and resolves IPv4 only, so IPv6 literals
    are refused here rather than misread there."""
    host, sep, port = text.strip().partition(":")
    if not sep or not host or ":" in port:
        raise ValueError(f"{text!r} is not HOST:PORT (IPv4 address or host name, then the port)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return Endpoint(host, int(port))


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """A comma-separated list of HOST:PORT, without repeats."""
    endpoints = tuple(parse_endpoint(part) for part in text.split(",") if part.strip())
    if len(set(endpoints)) != len(endpoints):
        raise ValueError(f"{text!r} names an rpc server twice")
    return endpoints


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# -- probing ---------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the connection closed mid-answer")
        data += chunk
    return data


def _command(sock: socket.socket, cmd: int, payload: bytes, reply_size: int) -> bytes:
    # ggml-rpc framing: | cmd (1 byte) | size (8 bytes) | payload |, answered by
    # | size (8 bytes) | reply |.
    sock.sendall(bytes([cmd]) + _SIZE.pack(len(payload)) + payload)
    (size,) = _SIZE.unpack(_recv_exact(sock, _SIZE.size))
    if size != reply_size:
        raise ConnectionError(f"an answer of {size} bytes where {reply_size} were expected")
    return _recv_exact(sock, reply_size)


def probe(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT_S) -> int:
    """The number of devices the rpc server at `endpoint` serves, asked with the protocol's
    own handshake on a connection of its own. Raises RpcError when it cannot be reached, does
    not answer (an rpc server serves one client at a time), or speaks another version."""
    where = str(endpoint)
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise RpcError(f"rpc server {where}: cannot resolve {endpoint.host}: {exc}", where) from exc
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(infos[0][4])
            hello = _command(sock, _CMD_HELLO, bytes(_CONN_CAPS_SIZE), _HELLO_REPLY.size)
            major, minor, patch, _, _ = _HELLO_REPLY.unpack(hello)
            if major != RPC_PROTO_MAJOR or minor > RPC_PROTO_MINOR:
                raise RpcError(
                    f"rpc server {where} speaks protocol {major}.{minor}.{patch}; this worker's "
                    f"llama.cpp speaks {RPC_PROTO_MAJOR}.{RPC_PROTO_MINOR}: run the same llorch "
                    "version on both machines",
                    where,
                )
            (count,) = _COUNT.unpack(_command(sock, _CMD_DEVICE_COUNT, b"", _COUNT.size))
    except TimeoutError as exc:
        raise RpcError(
            f"rpc server {where} did not answer within {timeout:g}s (an rpc server serves one "
            "worker at a time: is another one using it?)",
            where,
        ) from exc
    except OSError as exc:  # refused, unreachable, reset, a closed connection
        raise RpcError(f"rpc server {where} is unreachable: {exc}", where) from exc
    if count == 0:
        raise RpcError(f"rpc server {where} serves no device", where)
    return int(count)


# -- the ggml library ------------------------------------------------------------------------

_ADD_SERVER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
START_SERVER = ctypes.CFUNCTYPE(
    None,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_void_p),
)


def ggml() -> ctypes.CDLL:
    """libggml with the registry functions this module calls typed."""
    # Imported here: loading llama.cpp is not needed to parse an endpoint or a command line.
    from llorch.worker.backend import system

    lib = system._ggml()
    lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    lib.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_by_name.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_dev_by_name.restype = ctypes.c_void_p
    return lib


def rpc_function(name: str, prototype: Any) -> Any:
    """A function of the RPC backend, looked up through its registry entry as llama.cpp's
    tools do (the backend may live in a library of its own)."""
    lib = ggml()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise RpcError(
            "this llama.cpp build has no RPC backend: rebuild it with GGML_RPC=ON "
            "(the cpu and cuda presets have it; see docs/build.md)"
        )
    address = lib.ggml_backend_reg_get_proc_address(reg, name.encode())
    if not address:
        raise RpcError(f"the RPC backend of this llama.cpp build has no {name}")
    return prototype(address)


# ggml keeps one registry entry per endpoint for the life of the process; so does this.
_remote: dict[Endpoint, tuple[int, ...]] = {}
# Loaded models using each endpoint. ggml shares one connection per endpoint among them, and
# an rpc server serves one connection at a time: a probe's own connection to an endpoint in
# use would wait behind ours, so endpoints in use are not probed again.
_in_use: Counter[Endpoint] = Counter()


def connect(endpoints: Sequence[Endpoint], timeout: float = PROBE_TIMEOUT_S) -> tuple[int, ...]:
    """ggml device handles of every device the rpc servers serve, in the given order. Every
    endpoint is probed before ggml touches any; all the unusable ones are named at once."""
    failures: list[RpcError] = []
    for endpoint in endpoints:
        if _in_use[endpoint]:
            continue
        try:
            probe(endpoint, timeout)
        except RpcError as exc:
            failures.append(exc)
    if failures:
        if len(failures) == 1:
            raise failures[0]
        message = "; ".join(str(f) for f in failures)
        raise RpcError(message, ",".join(str(f.endpoint) for f in failures))
    lib = ggml()
    add_server = rpc_function("ggml_backend_rpc_add_server", _ADD_SERVER)
    devices: list[int] = []
    for endpoint in endpoints:
        if endpoint not in _remote:
            reg = add_server(str(endpoint).encode())
            if not reg:
                raise RpcError(f"rpc server {endpoint} serves no device", str(endpoint))
            count = lib.ggml_backend_reg_dev_count(reg)
            _remote[endpoint] = tuple(lib.ggml_backend_reg_dev_get(reg, i) for i in range(count))
        devices.extend(_remote[endpoint])
    return tuple(devices)


def describe(dev: int) -> Device:
    lib = ggml()
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    return Device(
        name=(lib.ggml_backend_dev_name(dev) or b"").decode(),
        description=(lib.ggml_backend_dev_description(dev) or b"").decode(),  # HOST:PORT
        kind="rpc",
        memory_total_bytes=total.value,
        memory_free_bytes=free.value,
    )


def local_accelerators() -> list[int]:
    """This machine's GPUs (integrated ones only when there is no discrete one), in ggml's
    order: the devices llama.cpp splits a model over besides the remote ones. Remote devices
    are never in ggml's global list (see the module's docstring), so all of these are local."""
    lib = ggml()
    gpus, igpus = [], []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        kind = lib.ggml_backend_dev_type(dev)
        if kind == _DEV_GPU:
            gpus.append(dev)
        elif kind == _DEV_IGPU:
            igpus.append(dev)
    return gpus or igpus


# -- placing a model -------------------------------------------------------------------------


@dataclass
class Placement:
    """Where llama.cpp puts a model's layers: the remote devices first (llama.cpp's own
    order, which keeps the network transfers fewest), then this machine's GPUs; layers that
    --n-gpu-layers keeps back stay on this machine's CPU. The ctypes arrays must outlive the
    load call that reads them."""

    remote: tuple[int, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    devices: Any = None  # NULL-terminated ggml_backend_dev_t array, or None: llama.cpp's choice
    tensor_split: Any = None  # float[llama_max_devices()], or None: by free memory
    names: tuple[str, ...] = field(default=())

    def apply(self, params: Any) -> None:
        """Set llama_model_params.devices / tensor_split."""
        if self.devices is not None:
            params.devices = ctypes.cast(self.devices, ctypes.c_void_p)
        if self.tensor_split is not None:
            params.tensor_split = self.tensor_split

    def remote_devices(self) -> tuple[Device, ...]:
        return tuple(describe(dev) for dev in self.remote)

    def release(self) -> None:
        """The model using these endpoints is freed (its connections close with it)."""
        for endpoint in self.endpoints:
            _in_use[endpoint] -= 1
        self.endpoints = ()


def place(
    endpoints: Sequence[Endpoint], tensor_split: Sequence[float], max_devices: int
) -> Placement:
    """Connect to the rpc servers and build the device list and split of a model load."""
    if not endpoints and not tensor_split:
        return Placement()
    remote = connect(endpoints) if endpoints else ()
    local = local_accelerators()
    devices = [*remote, *local]
    lib = ggml()
    names = tuple((lib.ggml_backend_dev_name(d) or b"").decode() for d in devices)
    placement = Placement(remote=remote, endpoints=tuple(endpoints), names=names)
    if endpoints:
        placement.devices = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
    if tensor_split:
        if not devices:
            raise TensorSplitError(
                "--tensor-split splits layers over GPUs and rpc servers; this worker has neither"
            )
        if len(tensor_split) > len(devices) or len(tensor_split) > max_devices:
            raise TensorSplitError(
                f"--tensor-split has {len(tensor_split)} values for {len(devices)} devices "
                f"({', '.join(names)})"
            )
        split = (ctypes.c_float * max_devices)()
        for i, share in enumerate(tensor_split):
            split[i] = share
        placement.tensor_split = split
    _in_use.update(endpoints)  # until release(): the load that follows connects to them
    return placement


def with_remote(info: BackendInfo, placement: Placement | None) -> BackendInfo:
    """`info` with the remote devices of `placement` listed after the local ones."""
    if placement is None or not placement.remote:
        return info
    return replace(info, devices=info.devices + placement.remote_devices())
