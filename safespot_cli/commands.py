"""Subcommand registry: each module adds its parser; imports stay inside `run`."""

from __future__ import annotations

import argparse
from collections.abc import Callable


class UsageError(Exception):
    """A mistake the user can fix; printed without a traceback, exit status 2."""


Register = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]


def _registry() -> list[Register]:
    from safespot_cli import (
        bench_cmd,
        card_cmd,
        eval_cmd,
        ood_calibrate_cmd,
        ood_eval_cmd,
        serve_cmd,
        train_cmd,
        worker_cmd,
    )

    return [serve_cmd.register, worker_cmd.register, eval_cmd.register, ood_eval_cmd.register,
            ood_calibrate_cmd.register, train_cmd.register, bench_cmd.register, card_cmd.register]


REGISTRY: list[Register] = _registry()
