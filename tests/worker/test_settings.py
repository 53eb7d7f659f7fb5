"""Settings: LLORCH_* variables, generated flags, and clear errors."""

from __future__ import annotations

import argparse
import socket

import pytest

from llorch.cli import build_parser, main
from llorch.worker.cli import settings_from_args
from llorch.worker.settings import WorkerSettings


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_every_settings_field_has_a_flag():
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for name in WorkerSettings.model_fields:
        assert "--" + name.replace("_", "-") in help_text


def test_defaults(monkeypatch):
    for name in WorkerSettings.model_fields:
        monkeypatch.delenv(f"LLORCH_{name.upper()}", raising=False)
    settings = settings_from_args(parse())
    assert (settings.host, settings.port, settings.ctx_size) == ("127.0.0.1", 8080, 4096)
    assert settings.model == [] and settings.callback_url is None
    assert settings.worker_id.startswith("llorch-")


def test_environment_then_flags(monkeypatch):
    monkeypatch.setenv("LLORCH_PORT", "9001")
    monkeypatch.setenv("LLORCH_CTX_SIZE", "512")
    settings = settings_from_args(parse("--ctx-size", "1024"))
    assert settings.port == 9001  # from the environment
    assert settings.ctx_size == 1024  # the flag wins


def test_flags_map_to_fields():
    settings = settings_from_args(
        parse(
            "--model",
            "/m.gguf",
            "--host",
            "0.0.0.0",
            "--port",
            "1234",
            "--worker-id",
            "w7",
            "--callback-url",
            "http://orch:1/cb",
            "--n-gpu-layers",
            "10",
            "--threads",
            "3",
        )
    )
    assert settings.model == ["/m.gguf"] and settings.worker_id == "w7"
    assert str(settings.callback_url) == "http://orch:1/cb"
    assert (settings.n_gpu_layers, settings.threads, settings.port) == (10, 3, 1234)
    # A wildcard bind is no address to call: the machine's host name is advertised.
    assert settings.public_url == f"http://{socket.gethostname()}:1234"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--port", "70000"], "--port 70000"),
        (["--callback-url", "not a url"], "--callback-url 'not a url'"),
        (["--threads", "0"], "--threads 0"),
        (["--n-gpu-layers", "-2"], "--n-gpu-layers '-2'"),
        (["--n-gpu-layers", "most"], "or Input should be 'auto'"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(argv, needle, capsys):
    assert main(["serve", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_non_numeric_port_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        parse("--port", "http")
    assert info.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_control_flags(monkeypatch):
    monkeypatch.delenv("LLORCH_API_TOKEN", raising=False)
    settings = settings_from_args(
        parse("--max-queue", "3", "--drain-timeout", "2.5", "--api-token", "zq-9")
    )
    assert settings.max_queue == 3 and settings.drain_timeout == 2.5
    assert settings.api_token is not None and settings.api_token.get_secret_value() == "zq-9"
    assert "zq-9" not in repr(settings)


def test_control_defaults(monkeypatch):
    for name in ("MAX_QUEUE", "DRAIN_TIMEOUT", "API_TOKEN"):
        monkeypatch.delenv(f"LLORCH_{name}", raising=False)
    settings = settings_from_args(parse())
    assert (settings.max_queue, settings.drain_timeout, settings.api_token) == (64, 30.0, None)


def test_api_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("LLORCH_API_TOKEN", "from-env")
    settings = settings_from_args(parse())
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "from-env"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--max-queue", "0"], "--max-queue 0"),
        (["--drain-timeout", "-1"], "--drain-timeout -1.0"),
    ],
)
def test_bad_control_values_exit_2(argv, needle, capsys):
    assert main(["serve", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_an_empty_token_is_refused_without_echoing_it(monkeypatch, capsys):
    monkeypatch.setenv("LLORCH_API_TOKEN", "   ")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "--api-token '***'" in err and "must not be empty" in err


def test_a_bad_token_is_never_echoed(capsys):
    # The token is valid but another flag is not: the message must not show the token.
    assert main(["serve", "--api-token", "hunter2", "--port", "0"]) == 2
    assert "hunter2" not in capsys.readouterr().err


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "worker.internal"])
def test_non_loopback_host_without_token_exits_2(host, monkeypatch, capsys):
    monkeypatch.delenv("LLORCH_API_TOKEN", raising=False)
    assert main(["serve", "--host", host]) == 2
    err = capsys.readouterr().err
    assert f"refusing to listen on {host} without an API token" in err
    assert "--api-token" in err


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.org", False),
    ],
)
def test_loopback_only(host, loopback):
    assert WorkerSettings(host=host).loopback_only is loopback


def test_speculation_flags():
    auto = WorkerSettings().spec_options  # the default: prompt lookup under the cost rule
    assert auto.default and auto.auto and auto.draft_model is None
    off = settings_from_args(parse("--spec", "off")).spec_options
    assert not off.default and not off.auto
    ngram = settings_from_args(parse("--spec", "ngram", "--spec-draft-max", "5")).spec_options
    assert ngram.default and not ngram.auto and ngram.draft_model is None
    assert ngram.draft_max == 5
    drafted = settings_from_args(parse("--draft-model", "/d.gguf")).spec_options
    assert drafted.default and str(drafted.draft_model) == "/d.gguf"


def test_two_drafters_exit_2(capsys):
    assert main(["serve", "--spec", "ngram", "--draft-model", "/d.gguf"]) == 2
    assert "--draft-model '/d.gguf': Value error, --spec ngram and --draft-model" in (
        capsys.readouterr().err
    )
