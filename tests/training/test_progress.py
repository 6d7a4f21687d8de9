"""training/progress.py: per-step reports, rate-limited but never missing an epoch's
first and last step, and the terminal bar with epoch, images/s and ETA."""

from __future__ import annotations

import re
from typing import Any

import pytest

from training.progress import RunProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reports_are_rate_limited_but_keep_each_epochs_first_and_last_step() -> None:
    clock, reports = Clock(), list[dict[str, Any]]()
    progress = RunProgress(10, 2, 32, report=reports.append, bar=False, interval_s=1.0, clock=clock)
    for epoch in range(2):
        for step in range(10):
            clock.now += 0.25
            progress.step(epoch, step)
    # First and last of each epoch, and in between whenever a second has passed.
    assert [r["step"] for r in reports] == [1, 5, 9, 10, 11, 15, 19, 20]
    assert [r["epoch"] for r in reports] == [1, 1, 1, 1, 2, 2, 2, 2]
    first, last = reports[0], reports[-1]
    assert first == {"phase": "training", "fraction": 0.05, "epoch": 1, "epochs": 2, "step": 1, "steps": 20,
                     "images_per_s": 128.0, "eta_s": 4.8}  # rounded to 0.1 s
    assert last["fraction"] == 1.0 and last["eta_s"] == 0


def test_a_resumed_run_counts_from_where_it_stopped() -> None:
    clock, reports = Clock(), list[dict[str, Any]]()
    progress = RunProgress(4, 3, 8, start_epoch=1, start_step=2, report=reports.append, bar=False,
                           interval_s=60, clock=clock)
    clock.now += 2.0
    progress.step(1, 2)  # the first step of this process is reported even mid-epoch
    clock.now += 2.0
    progress.step(1, 3)
    assert [(r["step"], r["fraction"]) for r in reports] == [(7, 0.5833), (8, 0.6667)]
    assert reports[1]["eta_s"] == pytest.approx(4 * 2.0) and reports[1]["images_per_s"] == 4.0


def test_the_bar_shows_epoch_images_per_second_and_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    progress = RunProgress(3, 2, 16, bar=True)
    for epoch in range(2):
        for step in range(3):
            progress.step(epoch, step, loss="1.234")
    progress.write('{"epoch": 2}')
    progress.close()
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "96.0/96.0" in err and "loss=1.234" in err
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, [\d.]+k?img/s", err)  # elapsed<left, rate
    assert '{"epoch": 2}' in err


def test_no_sink_no_reports() -> None:
    progress: Any = RunProgress(2, 1, 4, bar=False)
    progress.step(0, 0)
    progress.step(0, 1)
    progress.close()
