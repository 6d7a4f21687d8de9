"""Worker settings from the environment, and the `safespot worker` command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from safespot_cli import worker_cmd
from safespot_cli.errors import UsageError
from worker.protocol import ADMIN_QUEUE, FILTER_QUEUE, TRAIN_QUEUE, TrainRequest
from worker.settings import WorkerSettings


def test_lists_come_comma_separated_and_paths_default_like_the_api(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAFESPOT_QUEUES", f"{TRAIN_QUEUE}, {ADMIN_QUEUE}")
    monkeypatch.setenv("SAFESPOT_WEBHOOK_ALLOWED_HOSTS", "a.example.com,*.b.org")
    monkeypatch.setenv("SAFESPOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SAFESPOT_MAX_BATCH", "16")
    s = WorkerSettings()
    assert s.queues == [TRAIN_QUEUE, ADMIN_QUEUE] and s.webhook_allowed_hosts == {"a.example.com", "*.b.org"}
    assert s.checkpoint_path == tmp_path / "checkpoints" and s.max_batch == 16 and s.max_wait_ms == 50
    monkeypatch.setenv("SAFESPOT_MAX_BATCH", "0")
    with pytest.raises(ValueError):
        WorkerSettings()


def test_the_embedded_worker_takes_the_api_settings(monkeypatch, tmp_path: Path) -> None:
    from service.settings import Settings

    monkeypatch.setenv("SAFESPOT_VETTING_N", "7")  # a worker's own setting comes from the environment
    api = Settings(data_dir=tmp_path, checkpoint_dir=tmp_path / "ck", webhook_allowed_hosts="H.org",
                   max_checkpoint_bytes=1234, max_queue=3)
    s = WorkerSettings.from_shared(api)
    assert s.checkpoint_path == tmp_path / "ck" and s.webhook_allowed_hosts == {"h.org"} and s.max_queue == 3
    assert s.max_checkpoint_bytes == 1234 and s.metrics_port == 0 and s.queues == [FILTER_QUEUE, ADMIN_QUEUE]
    assert s.vetting_n == 7 and WorkerSettings().max_checkpoint_bytes == Settings().max_checkpoint_bytes


def test_queued_training_takes_the_trainer_speed_settings(monkeypatch, tmp_path: Path) -> None:
    from worker.training_runs import train_config

    monkeypatch.setenv("SAFESPOT_TRAIN_PRECISION", "bf16")
    monkeypatch.setenv("SAFESPOT_TRAIN_CHANNELS_LAST", "false")
    request: TrainRequest = {"job_id": "job1", "recipe": "adv-fast", "norm": "linf", "eps": 8 / 255, "epochs": 1,
                             "data": "cifar10", "limit": None, "name": "", "arch": "cifar_cnn"}
    cfg = train_config(request, WorkerSettings(data_dir=tmp_path), "ck1", "job1")
    assert cfg.precision == "bf16" and cfg.channels_last is False
    monkeypatch.setenv("SAFESPOT_TRAIN_PRECISION", "fp16")  # needs loss scaling: not offered
    with pytest.raises(ValueError):
        WorkerSettings()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="safespot")
    worker_cmd.register(p.add_subparsers(dest="command"))
    return p


def test_worker_command_options(capsys, monkeypatch) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["worker", "--help"])
    text = capsys.readouterr().out
    for option in ("--queues", "--max-batch", "--max-wait-ms", "--burst", "--metrics-port"):
        assert option in text
    args = parser().parse_args(["worker", "--queues", "safespot-train", "--max-batch", "4", "--burst"])
    assert args.queues == ["safespot-train"] and args.max_batch == 4 and args.burst
    monkeypatch.delenv("SAFESPOT_REDIS_URL", raising=False)
    with pytest.raises(UsageError, match="SAFESPOT_REDIS_URL"):
        args.run(args)
    bad = parser().parse_args(["worker", "--max-batch", "0"])
    with pytest.raises(UsageError):
        bad.run(bad)
