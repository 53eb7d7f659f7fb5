"""llama.cpp's RPC backend: endpoints, the handshake probe, `llorch rpc-server`, and a model
split over two rpc servers against the same model on this machine alone (the reference)."""

from __future__ import annotations

import logging
import re
import socket
import struct
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rpc_servers import RpcServerProcess, dead_endpoint, start_rpc_server
from support import FRANCE, THREADS, free_port

from llorch.worker.backend import rpc
from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import (
    GenerationRequest,
    LoadOptions,
    SamplingParams,
    TokenEvent,
)
from llorch.worker.backend.single import generate
from llorch.worker.rpc import RpcServeError, check_host, remote_warning, serve_rpc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:50052", (rpc.Endpoint("127.0.0.1", 50052),)),
        (" a:1 , b.example:65535", (rpc.Endpoint("a", 1), rpc.Endpoint("b.example", 65535))),
        ("", ()),
    ],
)
def test_endpoints_parse(text, expected):
    assert rpc.parse_endpoints(text) == expected


@pytest.mark.parametrize(
    "text", ["127.0.0.1", ":50052", "h:0", "h:65536", "h:x", "::1:50052", "h:1,h:1"]
)
def test_bad_endpoints_are_refused(text):
    with pytest.raises(ValueError):
        rpc.parse_endpoints(text)


def test_a_dead_server_is_an_error_naming_it():
    endpoint = dead_endpoint()
    with pytest.raises(rpc.RpcError, match=f"rpc server {endpoint} is unreachable") as caught:
        rpc.probe(rpc.parse_endpoint(endpoint))
    assert caught.value.endpoint == endpoint
    assert caught.value.code == "RPC_UNAVAILABLE"


def serve_once(reply: Callable[[socket.socket], None]) -> Iterator[str]:
    """A loopback TCP server that answers one connection with `reply`."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        conn, _ = listener.accept()
        with conn:
            reply(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        listener.close()
        thread.join(10)


def test_a_server_that_does_not_answer_the_handshake_is_an_error():
    released = threading.Event()
    for endpoint in serve_once(lambda conn: released.wait(30)):
        try:
            with pytest.raises(rpc.RpcError, match=f"{endpoint} did not answer within 0.5s"):
                rpc.probe(rpc.parse_endpoint(endpoint), timeout=0.5)
        finally:
            released.set()


def test_a_server_of_another_protocol_version_is_an_error():
    def hello_v6(conn: socket.socket) -> None:
        conn.recv(1 + 8 + 24)
        conn.sendall(struct.pack("<Q", 28) + bytes([6, 0, 0, 0]) + bytes(24))

    for endpoint in serve_once(hello_v6):
        with pytest.raises(rpc.RpcError, match=r"speaks protocol 6\.0\.0; .* speaks 7\.0"):
            rpc.probe(rpc.parse_endpoint(endpoint))


# -- llorch rpc-server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RpcServerProcess]]:
    tmp = tmp_path_factory.mktemp("rpc")
    started: list[RpcServerProcess] = []
    try:
        for _ in range(2):
            started.append(start_rpc_server(tmp, "--threads", "1", "--device", "CPU"))
        yield started
    finally:
        for server in started:
            server.stop()


def test_an_rpc_server_serves_this_machines_cpu(servers):
    for server in servers:
        assert rpc.probe(rpc.parse_endpoint(server.endpoint)) == 1
        assert "serving CPU (" in server.output()


def test_rpc_server_refuses_a_remote_address_without_allow_remote():
    refused = r"refusing to listen on 192\.0\.2\.1: .*--allow-remote"
    with pytest.raises(RpcServeError, match=refused):
        serve_rpc("192.0.2.1", free_port())
    check_host("192.0.2.1", allow_remote=True)  # allowed when asked for


def test_a_remote_address_is_served_with_a_warning():
    assert remote_warning("127.0.0.1:50052") is None
    warning = remote_warning("0.0.0.0:50052")
    assert warning is not None and "no authentication" in warning and "0.0.0.0:50052" in warning


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host": "localhost"}, "IPv4 address"),
        ({"devices": ["NOPE"]}, "--device 'NOPE': no such device; this machine has CPU"),
        ({"threads": 0}, "--threads 0"),
    ],
)
def test_rpc_server_refuses_bad_settings(kwargs, message):
    with pytest.raises(RpcServeError, match=message):
        serve_rpc(**({"host": "127.0.0.1", "port": free_port()} | kwargs))


def test_rpc_server_on_a_taken_port_exits_with_status_2(servers):
    port = servers[0].endpoint.rsplit(":", 1)[1]
    cmd = [sys.executable, "-m", "llorch.cli", "rpc-server", "--port", port]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr


# -- a model over rpc servers ----------------------------------------------------------------

GREEDY = SamplingParams(temperature=0.0)


def greedy_tokens(backend: LlamaCppBackend, prompt: str, n: int = 16) -> list[int]:
    request = GenerationRequest(tuple(backend.tokenize(prompt)), n, GREEDY)
    events = generate(backend.decoder(), request, lambda: False)
    return [e.token_id for e in events if isinstance(e, TokenEvent)]


def test_a_model_split_over_two_rpc_servers_gives_the_local_greedy_tokens(
    backend, model_path: Path, servers, caplog
):
    reference = greedy_tokens(backend, FRANCE)
    endpoints = tuple(s.endpoint for s in servers)
    # Gemma 3 270M has 18 blocks plus the output layer: 12 offloaded layers leave 7 blocks on
    # this machine's CPU and put 6 on each rpc server.
    options = LoadOptions(
        ctx_size=1024, threads=THREADS, n_gpu_layers=12, rpc_servers=endpoints, tensor_split=(1, 1)
    )
    split, second = LlamaCppBackend(), LlamaCppBackend()
    caplog.set_level(logging.DEBUG, logger="llorch.llama_cpp")
    try:
        split.load(model_path, options)
        native = caplog.text
        devices = split.backend_info().devices
        assert greedy_tokens(split, FRANCE) == reference
        # A second model of the process on a server the first one holds: ggml shares the
        # connection, which an rpc server (one client at a time) requires.
        second.load(
            model_path, LoadOptions(ctx_size=1024, threads=THREADS, rpc_servers=endpoints[:1])
        )
        assert greedy_tokens(second, FRANCE) == reference
    finally:
        second.close()
        split.close()
    remote = [d for d in devices if d.kind == "rpc"]
    assert [d.description for d in remote] == list(endpoints)
    assert all(d.memory_total_bytes > 0 for d in remote)
    # llama.cpp's own account of where each layer went (layer 18 is the output layer).
    placed = Counter(re.findall(r"layer +\d+ assigned to device (\w+)", native))
    assert placed == {"CPU": 7, remote[0].name: 6, remote[1].name: 6}


def test_more_tensor_split_shares_than_devices_is_a_load_error(model_path: Path, servers):
    options = LoadOptions(rpc_servers=(servers[0].endpoint,), tensor_split=(1, 1))
    instance = LlamaCppBackend()
    with pytest.raises(rpc.TensorSplitError, match="2 values for 1 devices"):
        instance.load(model_path, options)
    instance.close()


def test_a_dead_rpc_server_is_a_load_error_not_a_crash(model_path: Path):
    endpoint = dead_endpoint()
    instance = LlamaCppBackend()
    with pytest.raises(rpc.RpcError, match=f"rpc server {endpoint} is unreachable"):
        instance.load(model_path, LoadOptions(rpc_servers=(endpoint,)))
    instance.close()
