"""Settings: LLORCH_* variables, generated flags, and clear errors."""

from __future__ import annotations

import argparse

import pytest

from llorch.cli import build_parser, main
from worker.cli import settings_from_args
from worker.settings import WorkerSettings


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
    assert settings.model is None and settings.callback_url is None
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
    assert settings.model == "/m.gguf" and settings.worker_id == "w7"
    assert str(settings.callback_url) == "http://orch:1/cb"
    assert (settings.n_gpu_layers, settings.threads, settings.port) == (10, 3, 1234)
    assert settings.public_url == "http://127.0.0.1:1234"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--port", "70000"], "--port 70000"),
        (["--callback-url", "not a url"], "--callback-url 'not a url'"),
        (["--threads", "0"], "--threads 0"),
        (["--n-gpu-layers", "-2"], "--n-gpu-layers -2"),
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
