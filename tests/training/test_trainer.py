"""The training sidecar: a fresh tiny run, kill-and-resume, and two-process DDP (gloo, CPU)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.hardware import cpu_has_bf16
from tests.conftest import REPO
from training.data import CIFAR10_CLASSES, ImageSet
from training.trainer import TrainConfig, _model_info, _one_cycle, use_layout


@pytest.fixture(scope="module")
def train_npz(tmp_path_factory: pytest.TempPathFactory, cifar_mini: dict[str, np.ndarray]) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.npz"
    np.savez(path, x=cifar_mini["x_train"], y=cifar_mini["y_train"])
    return path


def _command(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "safespot_cli.main", "train", "--data", str(data), "--width", "4",
            "--holdout", "64", "--eval-pgd", "32", "--batch-size", "32", "--run-dir", str(run_dir),
            "--threads", "1", "--quiet", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_a_fresh_one_epoch_run_writes_a_self_describing_checkpoint(train_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = subprocess.run(_command(train_npz, run, "--recipe", "s-fgsm-adv", "--epochs", "1",
                                   "--safe-fraction", "0.5"),
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = load_checkpoint(run / "model.safetensors")
    info = loaded.info
    assert info.recipe["name"] == "s-fgsm-adv" and info.recipe["safe_fraction"] == 0.5
    assert info.threat == {"norm": "linf", "eps": 8 / 255}
    assert info.training["epochs"] == 1 and "safespot train" in info.training["command"]
    assert info.data["holdout"] == 64 and info.class_names
    assert info.domain == ""  # trained on a path: what its images are is not known
    # --precision defaults to auto; the checkpoint records what was used, never "auto".
    assert info.training["config"]["precision"] == ("bf16" if cpu_has_bf16() else "fp32")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"holdout_clean_acc", "holdout_pgd_acc", "train_loss", "images_per_s"} <= set(log[0])


def test_the_domain_is_the_named_data_set_never_a_path() -> None:
    data = ImageSet(np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int64), list(CIFAR10_CLASSES))
    assert _model_info(TrainConfig(data="cifar10"), data).domain == "cifar10"
    assert _model_info(TrainConfig(data="tinyimagenet"), data).domain == "tinyimagenet"
    assert _model_info(TrainConfig(data="data/cifar10_train.npz"), data).domain == ""
    assert _model_info(TrainConfig(data="tiny32/val.npz", domain="tinyimagenet"), data).domain == "tinyimagenet"


def test_the_view_is_given_or_the_whole_image_resized() -> None:
    data = ImageSet(np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int64), list(CIFAR10_CLASSES))
    assert _model_info(TrainConfig(arch="resnet50"), data).view == {"kind": "resize"}
    assert _model_info(TrainConfig(view="resize-crop:32"), data).view == {"kind": "resize-crop", "resize": 32,
                                                                          "crop": 32}
    assert _model_info(TrainConfig(view="resize-crop"), data).view["resize"] == 36  # 32 / 0.875
    with pytest.raises(ValueError, match="expected resize"):
        _model_info(TrainConfig(view="stretch"), data)


def test_a_bf16_curriculum_saves_float32_weights(train_npz: Path, tmp_path: Path) -> None:
    # --save-every above the epoch's steps: the warm-up epoch's log line comes before any
    # snapshot or best.pt exists (the run directory must still be there for it).
    run = tmp_path / "fresh" / "run"
    done = subprocess.run(_command(train_npz, run, "--recipe", "s-fgsm-adv", "--attack", "pgd",
                                   "--attack-steps", "2", "--warmup-recipe", "adv-fast", "--warmup-epochs", "1",
                                   "--epochs", "2", "--save-every", "100000", "--precision", "bf16",
                                   "--channels-last"),
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = load_checkpoint(run / "model.safetensors")
    config = loaded.info.training["config"]
    assert config["precision"] == "bf16" and config["channels_last"] is True
    assert {w.dtype for w in loaded.model.state_dict().values()} == {torch.float32, torch.int64}
    assert len((run / "log.jsonl").read_text().splitlines()) == 2 and loaded.info.training["best_epoch"] == 2


def test_a_trades_run_records_its_recipe_and_a_gentle_schedule(train_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "trades"
    done = subprocess.run(_command(train_npz, run, "--recipe", "trades", "--beta", "3", "--attack-steps", "2",
                                   "--attack-step", "0.5", "--eps", str(4 / 255), "--epochs", "1",
                                   "--lr", "0.01", "--lr-rise", "0.1"),
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    info = load_checkpoint(run / "model.safetensors").info
    assert info.recipe["name"] == "trades" and info.recipe["beta"] == 3.0 and info.recipe["attack_steps"] == 2
    assert info.threat == {"norm": "linf", "eps": pytest.approx(4 / 255)}
    assert info.training["config"]["lr_rise"] == 0.1 and info.training["config"]["lr"] == 0.01
    log = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert np.isfinite(log["train_loss"]) and 0 <= log["holdout_pgd_acc"] <= log["holdout_clean_acc"] <= 1


def test_a_finished_run_rewrites_its_checkpoint_with_the_kept_epoch(train_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ("--recipe", "adv-pgd", "--attack-steps", "1", "--epochs", "1", "--precision", "fp32")
    assert subprocess.run(_command(train_npz, run, *args), capture_output=True, env=_env(), timeout=300).returncode == 0
    # Make the best epoch's snapshot differ from the last epoch's weights, as after a noisy held-out pick.
    best = {k: v + 1 if v.is_floating_point() else v for k, v in torch.load(run / "best.pt", weights_only=True).items()}
    torch.save(best, run / "best.pt")
    last = {k.removeprefix("network."): v for k, v in torch.load(run / "state.pt", weights_only=True)["model"].items()}
    for keep, expected in (("best", best), ("last", last)):
        done = subprocess.run(_command(train_npz, run, *args, "--keep", keep),
                              capture_output=True, text=True, env=_env(), timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        loaded = load_checkpoint(run / "model.safetensors")
        weights = loaded.model.network.state_dict()
        assert set(weights) <= set(expected) and all(torch.equal(v, expected[k]) for k, v in weights.items()), keep
        assert loaded.info.training["kept"] == keep and loaded.info.training["kept_epoch"] == 1
    assert len((run / "log.jsonl").read_text().splitlines()) == 1  # rewritten, not trained again
    with pytest.raises(ValueError, match="keep must be"):
        TrainConfig(keep="median")


def test_the_layout_switch_covers_weights_and_activations(tiny_model, cifar_mini) -> None:
    seen: list[torch.Tensor] = []
    x = torch.from_numpy(cifar_mini["x_test"][:4]).permute(0, 3, 1, 2).float() / 255
    outputs = {}
    for channels_last in (True, False):
        model = use_layout(copy.deepcopy(tiny_model), channels_last)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        handle = conv.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
        with torch.no_grad():
            outputs[channels_last] = model(x)
        handle.remove()
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert conv.weight.is_contiguous(memory_format=layout)
        assert seen[-1].is_contiguous(memory_format=layout) and not seen[-1].is_contiguous(
            memory_format=torch.contiguous_format if channels_last else torch.channels_last)
    torch.testing.assert_close(outputs[True], outputs[False], rtol=1e-4, atol=1e-4)


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")


def test_a_killed_run_resumes_from_its_last_saved_state(train_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = _command(train_npz, run, "--recipe", "adv-fast", "--epochs", "2", "--save-every", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 240
    while not (run / "state.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (run / "state.pt").exists(), "no state was saved"
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch: no chance to clean up
    proc.wait()
    saved = torch.load(run / "state.pt", weights_only=True)["progress"]
    assert saved["epoch"] == 0 and saved["step"] >= 2
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {run} at epoch 1, step {saved['step']}" in done.stderr
    assert load_checkpoint(run / "model.safetensors").info.training["epochs"] == 2


def test_two_process_ddp_on_cpu(train_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(29500 + os.getpid() % 1000), "-m", "safespot_cli.main",
           *_command(train_npz, run, "--recipe", "adv-fast", "--epochs", "1")[3:]]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = load_checkpoint(run / "model.safetensors").info
    assert info.training["world_size"] == 2


def test_one_cycle_schedule_rises_then_falls_to_zero() -> None:
    lrs = [_one_cycle(step, 100, 0.2, 0.4) for step in range(101)]
    assert lrs[0] == 0 and max(lrs) == pytest.approx(0.2) and lrs[100] == 0
    assert lrs.index(max(lrs)) == 40


def test_a_set_with_wnids_gives_checkpoints_that_record_them(tmp_path: Path) -> None:
    from training.data import load_dataset
    from training.trainer import _model_info

    path = tmp_path / "tiny_val.npz"  # as `safespot data download tinyimagenet` writes it
    np.savez(path, x=np.zeros((4, 16, 16, 3), np.uint8), y=np.array([0, 1, 0, 1]),
             class_names=np.asarray(["goldfish, Carassius auratus", "tabby, tabby cat"]),
             wnids=np.asarray(["n01443537", "n02123045"]))
    data = load_dataset(str(path))
    assert data.wnids == ["n01443537", "n02123045"]
    info = _model_info(TrainConfig(), data)
    assert info.wnids == ["n01443537", "n02123045"] and info.class_names[1] == "tabby, tabby cat"
    info.validate()
