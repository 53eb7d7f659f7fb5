"""`--rpc` and `--tensor-split`: flags, LLORCH_* variables, and what reaches the backend."""

from __future__ import annotations

import pytest

from llorch.cli import build_parser, main
from llorch.worker.cli import settings_from_args


def settings(*argv: str):  # type: ignore[no-untyped-def]
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_rpc_servers_and_shares_from_flags():
    got = settings("--rpc", " 127.0.0.1:50052, host-b:50053", "--tensor-split", "3, 1.5")
    assert got.rpc_servers == ("127.0.0.1:50052", "host-b:50053")
    assert got.tensor_split_shares == (3.0, 1.5)


def test_rpc_from_the_environment(monkeypatch):
    monkeypatch.setenv("LLORCH_RPC", "10.0.0.2:50052")
    monkeypatch.setenv("LLORCH_TENSOR_SPLIT", "1,1")
    got = settings()
    assert got.rpc_servers == ("10.0.0.2:50052",)
    assert got.tensor_split_shares == (1.0, 1.0)


def test_no_rpc_by_default(monkeypatch):
    monkeypatch.delenv("LLORCH_RPC", raising=False)
    monkeypatch.delenv("LLORCH_TENSOR_SPLIT", raising=False)
    got = settings()
    assert got.rpc_servers == () and got.tensor_split_shares == ()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--rpc", "10.0.0.2", "is not HOST:PORT"),
        ("--rpc", "10.0.0.2:0", "the port must be a number from 1 to 65535"),
        ("--rpc", "a:1,a:1", "names an rpc server twice"),
        ("--tensor-split", "3,x", "not a comma-separated list of numbers"),
        ("--tensor-split", "1,-1", "every share must be a finite number >= 0"),
        ("--tensor-split", "0,0", "at least one share must be above 0"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(capsys, flag, value, message):
    assert main(["serve", flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {value!r}" in err and message in err
