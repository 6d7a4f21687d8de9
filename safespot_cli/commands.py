"""Subcommand registry: each module adds its parser; heavy imports stay inside `run`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from safespot_cli.errors import UsageError

Register = Callable[[argparse._SubParsersAction], None]

__all__ = ["Register", "UsageError", "registry"]


def registry() -> list[Register]:
    """Every subcommand's `register`, imported when the parser is built (never at import
    time: a subcommand module importing this one must not find it half-loaded)."""
    from safespot_cli import (
        bench_cmd,
        card_cmd,
        certify_cmd,
        data_cmd,
        eval_cmd,
        eval_compare,
        eval_parts,
        filter_cmd,
        import_cmd,
        ood_calibrate_cmd,
        ood_eval_cmd,
        serve_cmd,
        train_cmd,
        worker_cmd,
    )

    return [filter_cmd.register, serve_cmd.register, worker_cmd.register, eval_cmd.register, eval_parts.register, eval_compare.register,
            ood_eval_cmd.register, ood_calibrate_cmd.register, train_cmd.register,
            bench_cmd.register, card_cmd.register, certify_cmd.register, data_cmd.register, import_cmd.register]
