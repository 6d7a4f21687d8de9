"""`safespot`: one console script, a subcommand per tool.

This package is the composition root: it is the only place that wires the
algorithm (safespot), the models, the worker and the service together.
Each subcommand imports what it needs when it runs, so `safespot serve` in
an API image never imports torch and `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from safespot_cli import commands
from safespot_cli.errors import UsageError

EPILOG = """examples:
  safespot filter photo.jpg -o out/            filter one image with the default model
  safespot serve --port 8000                   API + in-process worker (no Redis needed)
  export SAFESPOT_REDIS_URL=redis://localhost:6379/0   production: settings for both processes
  safespot serve --port 8000 & safespot worker          the API enqueues, the worker filters
  safespot eval --model cifar10 --n 1000 --json eval.json
  safespot train --recipe s-fgsm-adv --epochs 15 --out cifar10.safetensors

settings come from SAFESPOT_* environment variables (see README)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safespot", description="Protect images with safe spots: filter, serve, evaluate, train.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in commands.registry():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UsageError as e:
        print(f"safespot {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
