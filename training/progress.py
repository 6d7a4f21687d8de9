"""A training run's progress, step by step: the terminal bar of `safespot train` and
the reports a training job passes to the API.

A report (worker/protocol.py ``Progress``) is ``{"phase": "training", "fraction",
"epoch", "epochs", "step", "steps", "images_per_s", "eta_s"}``: ``step`` counts
the steps done over the whole run (a resumed run starts where it stopped),
``fraction`` is ``step / steps``, the rate and the ETA are measured since this
process started.  Reports go out at most once per ``interval_s``, but always
for the first and the last step of each epoch, so a short epoch is seen too.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

Report = Callable[[dict[str, Any]], None]


class RunProgress:
    def __init__(self, steps_per_epoch: int, epochs: int, images_per_step: int, *, start_epoch: int = 0,
                 start_step: int = 0, report: Report | None = None, bar: bool = True,
                 interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        from tqdm import tqdm

        self.steps_per_epoch, self.epochs, self.images_per_step = steps_per_epoch, epochs, images_per_step
        self.steps = max(1, steps_per_epoch * epochs)
        self.first = start_epoch * steps_per_epoch + start_step  # steps done before this process
        self.report, self.interval_s, self.clock = report, interval_s, clock
        self.started, self.last_report = clock(), -math.inf
        # One bar for the run, counted in images: tqdm shows img/s and the time left.
        self.bar = tqdm(total=self.steps * images_per_step, initial=self.first * images_per_step,
                        unit="img", unit_scale=True, desc=f"epoch {start_epoch + 1}/{epochs}",
                        disable=not bar, dynamic_ncols=True, mininterval=1.0)

    def step(self, epoch: int, step: int, **postfix: str) -> None:
        """Step `step` of epoch `epoch` (both from 0) is done."""
        done = epoch * self.steps_per_epoch + step + 1
        self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}", refresh=False)
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(self.images_per_step)
        if self.report is None:
            return
        now = self.clock()
        edge = step in (0, self.steps_per_epoch - 1) or done == self.first + 1
        if not edge and now - self.last_report < self.interval_s:
            return
        self.last_report = now
        per_step = (now - self.started) / (done - self.first)
        self.report({"phase": "training", "fraction": round(done / self.steps, 4), "epoch": epoch + 1,
                     "epochs": self.epochs, "step": done, "steps": self.steps,
                     "images_per_s": round(self.images_per_step / per_step, 1) if per_step > 0 else None,
                     "eta_s": round(per_step * (self.steps - done), 1)})

    def write(self, line: str) -> None:
        """A line on stderr that leaves the bar intact."""
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
