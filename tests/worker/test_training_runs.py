"""A training run as a job (worker/training_runs.py): progress per step and epoch, then vetting."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import FIXTURES, TINY_MODEL
from training.data import CIFAR10_CLASSES
from worker.registry_stores import file_registry
from worker.settings import WorkerSettings
from worker.training_runs import run_training


def test_each_step_and_epoch_is_reported_then_the_vetted_record(
        tmp_path: Path, cifar_mini: dict[str, np.ndarray]) -> None:
    settings = WorkerSettings(checkpoint_dir=tmp_path / "checkpoints", data_dir=tmp_path / "data",
                              vetting_data=FIXTURES / "cifar10_mini.npz", vetting_n=8,
                              default_model=str(TINY_MODEL), train_holdout=40, train_eval_pgd=8,
                              train_batch_size=20, threads=1, progress_interval_s=0)
    settings.data_dir.mkdir(parents=True)
    np.savez(settings.data_dir / "small.npz", x=cifar_mini["x_train"][:160], y=cifar_mini["y_train"][:160],
             class_names=CIFAR10_CLASSES)  # its classes name the domain: vetted on CIFAR-10
    reports: list[dict[str, Any]] = []
    registry = file_registry(settings.checkpoint_path)
    request = {"job_id": "t", "recipe": "natural", "norm": "linf", "eps": 8 / 255, "epochs": 2,
               "data": "small.npz", "limit": None, "name": "two-epochs", "arch": "cifar_cnn"}
    final = run_training(request, settings, job_id="t", progress=reports.append,  # type: ignore[arg-type]
                         registry=registry)
    # 120 training images in steps of 20: 6 steps an epoch, 12 in the run, each reported.
    steps = [r for r in reports if r["phase"] == "training" and "step" in r and "last_epoch" not in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert [r["epoch"] for r in steps] == [1] * 6 + [2] * 6
    fractions = [r["fraction"] for r in steps]
    assert all(a < b for a, b in pairwise(fractions)) and fractions[-1] == 0.95
    for r in steps:
        assert {"epochs", "steps", "images_per_s", "eta_s"} <= r.keys() and r["steps"] == 12
        assert r["images_per_s"] > 0 and r["eta_s"] >= 0
    assert steps[-1]["eta_s"] == 0 and steps[0]["eta_s"] > steps[5]["eta_s"]
    epochs = [r for r in reports if "last_epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2] and [r["fraction"] for r in epochs] == [0.475, 0.95]
    assert epochs[0]["last_epoch"]["epoch"] == 1 and "holdout_clean_acc" in epochs[0]["last_epoch"]
    every = [r["fraction"] for r in reports]
    assert all(a <= b for a, b in pairwise(every))  # the job's fraction never falls
    assert [r["phase"] for r in reports][-2:] == ["vetting", "done"]
    assert final["status"] == "ready" and final["name"] == "two-epochs"
    assert registry.get(final["id"]) == final  # registered, then its verdict


def test_built_in_sets_go_to_the_trainer_by_name_paths_stay_inside(tmp_path: Path) -> None:
    import pytest

    from worker.errors import JobError
    from worker.protocol import TRAINING_DATA
    from worker.training_runs import train_config

    settings = WorkerSettings(checkpoint_dir=tmp_path / "checkpoints", data_dir=tmp_path / "data")
    request: Any = {"job_id": "t", "recipe": "natural", "norm": "linf", "eps": 8 / 255, "epochs": 1,
                    "limit": None, "name": "n", "arch": "cifar_cnn"}
    for name in TRAINING_DATA:
        assert train_config(request | {"data": name}, settings, "ckpt_x", "t").data == name
    inside = train_config(request | {"data": "sets/a.npz"}, settings, "ckpt_x", "t").data
    assert inside == str((tmp_path / "data" / "sets" / "a.npz").resolve())
    with pytest.raises(JobError, match="outside the data directory"):
        train_config(request | {"data": "../x.npz"}, settings, "ckpt_x", "t")
