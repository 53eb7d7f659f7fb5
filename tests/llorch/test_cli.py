"""The console script's command table: every command a module registers is in
COMMAND_OWNERS under that module, so a command alone builds the parser it needs."""

from __future__ import annotations

import argparse
import importlib

import pytest

from llorch import cli


def commands(parser: argparse.ArgumentParser) -> set[str]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(action.choices)


@pytest.mark.parametrize("module", cli.COMMAND_MODULES)
def test_every_command_is_owned_by_the_module_that_registers_it(module: str) -> None:
    parser = argparse.ArgumentParser()
    importlib.import_module(module).register(parser.add_subparsers())
    for command in commands(parser):
        assert cli.COMMAND_OWNERS.get(command) == module, command


def test_a_command_alone_parses_as_with_every_command() -> None:
    argv = ["convert", "SRC", "-o", "OUT.gguf", "--outtype", "q8_0"]
    alone = cli.build_parser("convert").parse_args(argv)
    every = cli.build_parser().parse_args(argv)
    assert vars(alone) == vars(every)
    assert commands(cli.build_parser()) == set(cli.COMMAND_OWNERS)
