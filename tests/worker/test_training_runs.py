"""A training run as a job (worker/training_runs.py): progress per epoch, then vetting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import FIXTURES, TINY_MODEL
from worker.registry_stores import file_registry
from worker.settings import WorkerSettings
from worker.training_runs import run_training


def test_each_epoch_is_reported_as_it_ends_then_the_vetted_record(
        tmp_path: Path, cifar_mini: dict[str, np.ndarray]) -> None:
    settings = WorkerSettings(checkpoint_dir=tmp_path / "checkpoints", data_dir=tmp_path / "data",
                              vetting_data=FIXTURES / "cifar10_mini.npz", vetting_n=8,
                              default_model=str(TINY_MODEL), train_holdout=40, train_eval_pgd=8,
                              train_batch_size=40, threads=1)
    settings.data_dir.mkdir(parents=True)
    np.savez(settings.data_dir / "small.npz", x=cifar_mini["x_train"][:160], y=cifar_mini["y_train"][:160])
    reports: list[dict[str, Any]] = []
    registry = file_registry(settings.checkpoint_path)
    request = {"job_id": "t", "recipe": "natural", "norm": "linf", "eps": 8 / 255, "epochs": 2,
               "data": "small.npz", "limit": None, "name": "two-epochs", "arch": "cifar_cnn"}
    final = run_training(request, settings, job_id="t", progress=reports.append,  # type: ignore[arg-type]
                         registry=registry)
    epochs = [r for r in reports if r["phase"] == "training" and r["epoch"] > 0]
    assert [r["epoch"] for r in epochs] == [1, 2] and [r["fraction"] for r in epochs] == [0.475, 0.95]
    assert epochs[0]["last_epoch"]["epoch"] == 1 and "holdout_clean_acc" in epochs[0]["last_epoch"]
    assert [r["phase"] for r in reports][-2:] == ["vetting", "done"]
    assert final["status"] == "ready" and final["name"] == "two-epochs"
    assert registry.get(final["id"]) == final  # registered, then its verdict
