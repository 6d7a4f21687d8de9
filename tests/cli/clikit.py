"""Run registered subcommands in-process, as `safespot CMD ...` would."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def make_cli(*commands: Any) -> Callable[..., int]:
    """A `cli(*argv)` that parses argv with the given command modules registered and runs it."""

    def cli(*argv: str) -> int:
        parser = argparse.ArgumentParser(prog="safespot")
        sub = parser.add_subparsers(dest="command", required=True)
        for command in commands:
            command.register(sub)
        args = parser.parse_args(list(argv))
        return int(args.run(args))

    return cli
