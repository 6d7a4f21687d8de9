"""`safespot ood-eval` and `safespot ood-calibrate` on the tiny model and tiny synthetic sets."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.checkpoint import load_checkpoint, read_info, save_checkpoint
from safespot import find_safe_spots
from safespot.ood import safespot_score
from safespot.ood_eval import METHODS, MU_GRID, ood_metrics
from safespot_cli import ood_calibrate_cmd, ood_eval_cmd
from safespot_cli.common import recorded_search_config
from safespot_cli.errors import UsageError
from tests.cli.clikit import make_cli
from training.data import strided, to_tensor
from training.ood_sets import FASHION_MNIST_TEST, pad_gray_to_rgb, read_idx_images
from worker.results import ood_score

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny.safetensors"
SEARCH = ["--preset", "fast", "--batch-size", "32"]
DEFAULT_METHODS = set(METHODS) - {"flag"}  # ood-eval's default --methods: the stored flag only when asked


cli = make_cli(ood_eval_cmd, ood_calibrate_cmd)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, cifar_mini: dict[str, np.ndarray]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ood")
    rng = np.random.default_rng(0)
    np.savez(d / "in.npz", x=cifar_mini["x_test"], y=cifar_mini["y_test"])
    np.savez(d / "fit.npz", x=cifar_mini["x_train"], y=cifar_mini["y_train"])
    # Stand-ins for Tiny ImageNet: CIFAR images with their pixels shuffled (natural colours, no objects).
    shuffled = cifar_mini["x_train"][:40].reshape(40, -1, 3)[:, rng.permutation(1024)].reshape(40, 32, 32, 3)
    np.savez(d / "tiny.npz", x_ood_test=shuffled, x_outlier_train=rng.integers(0, 256, (80, 32, 32, 3), np.uint8))
    np.savez(d / "extra.npz", x=(rng.random((20, 32, 32, 1)) * 255).astype(np.uint8))
    fm = d / "fashion"
    fm.mkdir()
    images = rng.integers(0, 256, (30, 28, 28), np.uint8)
    header = b"".join(v.to_bytes(4, "big") for v in (2051, 30, 28, 28))
    with gzip.open(fm / FASHION_MNIST_TEST, "wb") as f:
        f.write(header + images.tobytes())
    return {"dir": d, "in": d / "in.npz", "fit": d / "fit.npz", "tiny": d / "tiny.npz",
            "extra": d / "extra.npz", "fashion": fm}


def test_metrics_of_a_separable_toy_and_its_mirror() -> None:
    ins, outs = np.linspace(0.6, 1.0, 50), np.linspace(0.0, 0.4, 70)
    assert ood_metrics(ins, outs) == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    mirrored = ood_metrics(outs, ins)
    assert mirrored["auroc"] == 0.0 and mirrored["fpr95"] == 1.0
    half = ood_metrics(np.arange(100.0), np.arange(100.0) + 0.5)  # interleaved
    assert half["auroc"] == pytest.approx(0.495, abs=0.01)


def test_fashion_mnist_idx_is_padded_to_three_channels(files: dict[str, Path]) -> None:
    raw = read_idx_images(files["fashion"] / FASHION_MNIST_TEST)
    x = pad_gray_to_rgb(raw, (32, 32))
    assert x.shape == (30, 32, 32, 3) and x.dtype == np.uint8
    assert np.array_equal(x[:, 2:30, 2:30, 1], raw) and x[:, :2].max() == 0 and x[:, :, 30:].max() == 0


def test_ood_eval_reports_every_set_and_method(files: dict[str, Path], tmp_path: Path) -> None:
    out, png = tmp_path / "ood.json", tmp_path / "ood.png"
    rc = cli("ood-eval", "--model", str(TINY), "--oe-model", str(TINY), "--data", str(files["in"]),
             "--fit-data", str(files["fit"]), "--n", "12", "--n-ood", "8", "--tinyimagenet", str(files["tiny"]),
             "--fashion-mnist", str(files["fashion"]), "--ood-set", f"extra={files['extra']}",
             *SEARCH, "--bootstrap", "40", "--json", str(out), "--plot", str(png))
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"model", "in_distribution", "sets"} and isinstance(report["model"], dict)
    assert isinstance(report["in_distribution"], str)
    assert set(report["sets"]) == {"tinyimagenet", "fashion-mnist", "gaussian", "uniform", "extra"}
    for per in report["sets"].values():
        assert set(per) == DEFAULT_METHODS
        for m in per.values():
            assert set(m) == {"auroc", "aupr", "fpr95"} and all(0.0 <= v <= 1.0 for v in m.values())
    assert report["missing"] == {} and report["skipped"] == {}
    assert report["sets"]["gaussian"]["oe"] == report["sets"]["gaussian"]["msp"]  # same model as OE here
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    intervals = report["intervals"]
    assert intervals["rounds"] == 40 and set(intervals["sets"]) == set(report["sets"])
    for name, per in intervals["sets"].items():
        for method in DEFAULT_METHODS:
            for metric, (lo, hi) in per[method].items():
                assert lo <= report["sets"][name][method][metric] + 1e-9 and lo <= hi
        assert set(per["safespot_minus"]) == DEFAULT_METHODS - {"safespot"}
        assert per["safespot_minus"]["oe"]["auroc"][0] <= per["safespot_minus"]["oe"]["auroc"][1]


def test_absent_sets_are_skipped_and_a_missing_oe_model_is_reported(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ood.json"
    rc = cli("ood-eval", "--model", str(TINY), "--data", str(files["in"]), "--n", "16",
             "--methods", "msp,oe,energy", "--data-dir", str(tmp_path / "nowhere"),
             "--fashion-mnist", str(tmp_path / "no-fashion"), "--bootstrap", "0", "--json", str(out))
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["intervals"] is None
    assert set(report["sets"]) == {"gaussian", "uniform"}
    assert set(report["skipped"]) == {"tinyimagenet", "fashion-mnist"}
    assert "dataset-fashion-mnist" in report["skipped"]["fashion-mnist"]
    assert "oe" in report["missing"] and all("oe" not in per for per in report["sets"].values())
    printed = capsys.readouterr()
    assert "skipping OOD set fashion-mnist" in printed.err and "missing" in printed.out
    with pytest.raises(UsageError, match="NAME=PATH"):
        cli("ood-eval", "--model", str(TINY), "--data", str(files["in"]), "--ood-set", "nonsense")
    with pytest.raises(UsageError, match="each NAME once"):
        cli("ood-eval", "--data", str(files["in"]), "--ood-set", "a=x.npz", "--ood-set", "a=y.npz")
    with pytest.raises(UsageError, match="unique"):
        cli("ood-eval", "--model", str(TINY), "--data", str(files["in"]), "--methods", "msp",
            "--ood-set", f"gaussian={files['extra']}")


def _calibratable(tmp_path: Path, **ood: Any) -> Path:
    """A copy of the tiny checkpoint as if trained with outliers (a 20-outlier validation split)."""
    ck = load_checkpoint(TINY)
    ck.info.ood = {"gamma": 0.5, "lambda": 0.1, "training": {"val_outliers": 20, "split_seed": 0}} | ood
    path = tmp_path / "ood.safetensors"
    save_checkpoint(ck.model, ck.info, path)
    return path


def test_calibration_stores_mu_and_a_threshold_with_95_percent_tpr(
        files: dict[str, Path], tmp_path: Path, cifar_mini: dict[str, np.ndarray]) -> None:
    path = _calibratable(tmp_path)
    before = load_checkpoint(path).sha256
    report = tmp_path / "cal.json"
    assert cli("ood-calibrate", "--model", str(path), "--outliers", str(files["tiny"]), "--val-data",
               str(files["fit"]), "--n-in", "20", *SEARCH, "--json", str(report)) == 0
    ck = load_checkpoint(path)
    ood = ck.info.ood
    assert ck.sha256 != before and ood["gamma"] == 0.5 and ood["lambda"] == 0.1
    assert ood["mu"] in MU_GRID and ood["tpr"] >= 0.95 and 0 <= ood["val_auroc"] <= 1
    assert "never trained on" in ood["chosen_on"]["outliers"] and ood["search"]["preset"] == "fast"
    assert set(json.loads(report.read_text())["scores"]) == {"in", "out"}
    # Recompute D on the same validation images: the threshold keeps >= 95% of them unflagged.
    args = argparse.Namespace(preset=None, norm=None, eps=None, delta=None, batch_size=32, seed=0)
    cfg, _ = recorded_search_config(args, ck.info)
    x_val = to_tensor(strided(cifar_mini["x_train"], 20))
    res = find_safe_spots(ck.model, x_val, cfg)
    d = safespot_score(res.msp.double(), res.msp_adv.double(), ood["mu"])
    assert float((d >= ood["threshold"]).double().mean()) >= 0.95
    flags = [ood_score(ck.info, float(m), float(a))[1] for m, a in zip(res.msp, res.msp_adv, strict=True)]
    assert sum(bool(flag) for flag in flags) <= 0.05 * len(flags)  # the service's flag agrees


def test_calibration_finds_the_trainers_holdout(tmp_path: Path, cifar_mini: dict[str, np.ndarray]) -> None:
    from training.data import holdout_split

    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "cifar10_train.npz", x=cifar_mini["x_train"], y=cifar_mini["y_train"])
    info = read_info(TINY)
    info.data = info.data | {"images": 400, "holdout": 30, "limit": None}
    x, desc = ood_calibrate_cmd.heldout_images(info, str(tmp_path / "data"), n=25)
    _, held = holdout_split(400, 30, info.training["config"]["seed"], None)
    assert np.array_equal(x, cifar_mini["x_train"][held[:25]]) and "held out" in desc
    info.data["images"] = 50_000
    with pytest.raises(UsageError, match="same data"):
        ood_calibrate_cmd.heldout_images(info, str(tmp_path / "data"), n=25)
    info.training = {}
    with pytest.raises(UsageError, match="--val-data"):
        ood_calibrate_cmd.heldout_images(info, str(tmp_path / "data"), n=25)


def test_calibration_refuses_contradicting_weights(files: dict[str, Path], tmp_path: Path) -> None:
    path = _calibratable(tmp_path)
    with pytest.raises(UsageError, match="gamma"):
        cli("ood-calibrate", "--model", str(path), "--outliers", str(files["tiny"]), "--val-data",
            str(files["fit"]), "--gamma", "2.0", "--n-in", "4", *SEARCH)


def test_a_tiny_imagenet_model_is_scored_against_its_own_data_not_cifar10(
        files: dict[str, Path], tmp_path: Path, cifar_mini: dict[str, np.ndarray]) -> None:
    """The photo model: no --data reads Tiny ImageNet's val split, Mahalanobis fits on its train
    split, and the built-in tinyimagenet set (its own classes) is left out, not scored."""
    ck = load_checkpoint(TINY)
    ck.info.domain = "tinyimagenet"
    model = tmp_path / "photo.safetensors"
    save_checkpoint(ck.model, ck.info, model)
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "tinyimagenet_train.npz", x=cifar_mini["x_train"], y=cifar_mini["y_train"])
    np.savez(data / "tinyimagenet_val.npz", x=cifar_mini["x_test"], y=cifar_mini["y_test"])
    out, png = tmp_path / "ood.json", tmp_path / "ood.png"
    assert cli("ood-eval", "--model", str(model), "--data-dir", str(data), "--n", "12", "--n-ood", "8",
               "--methods", "msp,mahalanobis", "--fit-n", "100", "--tinyimagenet", str(files["tiny"]),
               "--fashion-mnist", str(files["fashion"]), "--bootstrap", "0", "--json", str(out),
               "--plot", str(png)) == 0
    report = json.loads(out.read_text())
    assert report["in_distribution"].startswith("tinyimagenet val")
    assert "tinyimagenet_train.npz" in report["mahalanobis_fit"]
    assert set(report["sets"]) == {"fashion-mnist", "gaussian", "uniform"}
    assert "in-distribution" in report["skipped"]["tinyimagenet"]


def test_the_nonphoto_files_feed_ood_eval_and_ood_calibrate(files: dict[str, Path], tmp_path: Path) -> None:
    from training.nonphoto_sets import OUTLIERS_FILE, eval_file, write_sets

    write_sets(tmp_path / "sets", n=6, size=32, seed=0, calibration_seed=1, n_outliers=24)
    out = tmp_path / "ood.json"
    sets = [f"--ood-set={kind}={tmp_path / 'sets' / eval_file(kind)}" for kind in ("texture", "text", "screenshot")]
    assert cli("ood-eval", "--model", str(TINY), "--data", str(files["in"]), "--n", "8", "--methods", "msp",
               "--sets", "gaussian", *sets, "--bootstrap", "0", "--json", str(out)) == 0
    report = json.loads(out.read_text())
    assert set(report["sets"]) == {"gaussian", "texture", "text", "screenshot"}
    assert all(report["set_details"][k]["n"] == 6 for k in ("texture", "text", "screenshot"))
    path = _calibratable(tmp_path)  # holds out 20 validation outliers
    assert cli("ood-calibrate", "--model", str(path), "--outliers", str(tmp_path / "sets" / OUTLIERS_FILE),
               "--val-data", str(files["fit"]), "--n-in", "6", "--n-out", "6", *SEARCH) == 0
    ood = read_info(path).ood
    assert "nonphoto_outliers.npz: 6 of the 20 validation outliers" in ood["chosen_on"]["outliers"]


@pytest.fixture
def trained_here(tmp_path: Path, cifar_mini: dict[str, np.ndarray]) -> tuple[Path, Path]:
    """(a copy of the tiny checkpoint recording the 400 mini training images with 40 held out and
    an earlier D(x) calibration, the data folder holding those images as cifar10_train.npz)."""
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "cifar10_train.npz", x=cifar_mini["x_train"], y=cifar_mini["y_train"])
    ck = load_checkpoint(TINY)
    ck.info.data = ck.info.data | {"images": 400, "holdout": 40, "limit": None}
    ck.info.ood = {"gamma": 0.5, "lambda": 0.1, "training": {"val_outliers": 20, "split_seed": 0},
                   "mu": 0.3, "threshold": 0.5, "search": {"preset": "fast"}, "passes_per_image": {"in": 1}}
    path = tmp_path / "trained.safetensors"
    save_checkpoint(ck.model, ck.info, path)
    return path, data


def test_mahalanobis_calibration_fits_on_trained_images_and_keeps_the_tpr_of_the_holdout(
        files: dict[str, Path], trained_here: tuple[Path, Path], tmp_path: Path,
        cifar_mini: dict[str, np.ndarray]) -> None:
    import torch

    from models.ood_detector import detector_score
    from safespot.ood import LayerwiseMahalanobis, layer_features
    from training.data import holdout_split, strided_indices

    path, data = trained_here
    out, report = tmp_path / "cal.safetensors", tmp_path / "cal.json"
    assert cli("ood-calibrate", "--model", str(path), "--score", "mahalanobis", "--outliers", str(files["tiny"]),
               "--data-dir", str(data), "--fit-n", "200", "--tpr", "0.9", "--out", str(out),
               "--json", str(report)) == 0
    ck = load_checkpoint(out)
    ood = ck.info.ood
    assert ck.ood_detector is not None and ood["score"] == "mahalanobis-layers"
    assert not {"mu", "search", "passes_per_image"} & set(ood)  # the D(x) calibration is replaced...
    assert ood["gamma"] == 0.5 and ood["training"]["val_outliers"] == 20  # ...what training recorded is not
    assert ood["fit"]["images"] == "cifar10_train.npz: 200 of the 360 training images the trainer trained on, fixed stride"
    assert "40 of the 40 training images the trainer held out" in ood["chosen_on"]["in_distribution"]
    assert "never trained on" in ood["chosen_on"]["outliers"] and 0 <= ood["val_auroc"] <= 1
    assert load_checkpoint(path).info.ood["mu"] == 0.3  # --out: the original is untouched
    # The fit: a fixed stride of the images the trainer trained on (never its holdout).
    trained, held = holdout_split(400, 40, 0, None)
    fit = np.sort(trained)[strided_indices(360, 200)]
    refit = LayerwiseMahalanobis.fit(layer_features(ck.model, to_tensor(cifar_mini["x_train"][fit]))[1],
                                     torch.from_numpy(cifar_mini["y_train"][fit]))
    x_held = to_tensor(cifar_mini["x_train"][held])
    scores = detector_score(ck.model, ck.ood_detector, x_held, 8)
    assert torch.equal(scores, refit.score(layer_features(ck.model, x_held)[1]).cpu())
    assert json.loads(report.read_text())["scores"]["in"] == scores.tolist()
    kept = float((scores >= ood["threshold"]).double().mean())
    assert kept >= 0.9 and kept == ood["tpr"]
    assert float((scores >= ood["threshold"] + 1e-9).double().mean()) < 0.9  # the largest such threshold
    # A D(x) calibration of that file drops the detector again.
    assert cli("ood-calibrate", "--model", str(out), "--outliers", str(files["tiny"]), "--val-data",
               str(files["fit"]), "--n-in", "6", "--n-out", "6", *SEARCH) == 0
    again = load_checkpoint(out)
    assert again.ood_detector is None and "score" not in again.info.ood and "detector" not in again.info.ood


def test_mahalanobis_calibration_needs_labelled_fit_images_of_every_class(
        files: dict[str, Path], trained_here: tuple[Path, Path], tmp_path: Path,
        cifar_mini: dict[str, np.ndarray]) -> None:
    path, data = trained_here
    half = cifar_mini["y_train"] < 5
    np.savez(tmp_path / "half.npz", x=cifar_mini["x_train"][half], y=cifar_mini["y_train"][half])
    with pytest.raises(UsageError, match="all 10 classes"):
        cli("ood-calibrate", "--model", str(path), "--score", "mahalanobis", "--outliers", str(files["tiny"]),
            "--data-dir", str(data), "--fit-data", str(tmp_path / "half.npz"))
    ck = load_checkpoint(TINY)
    ck.info.training, ck.info.ood = {}, {"training": {"val_outliers": 20, "split_seed": 0}}
    save_checkpoint(ck.model, ck.info, tmp_path / "elsewhere.safetensors")
    with pytest.raises(UsageError, match="--fit-data"):
        cli("ood-calibrate", "--model", str(tmp_path / "elsewhere.safetensors"), "--score", "mahalanobis",
            "--outliers", str(files["tiny"]), "--val-data", str(files["fit"]))


def test_ood_eval_measures_the_stored_flag_at_its_threshold(
        files: dict[str, Path], tiny_detector_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "flag.json"
    assert cli("ood-eval", "--model", str(tiny_detector_checkpoint), "--data", str(files["in"]), "--n", "40",
               "--n-ood", "30", "--methods", "flag,msp", "--sets", "gaussian,uniform", "--ood-set",
               f"extra={files['extra']}", "--bootstrap", "0", "--json", str(out)) == 0
    report = json.loads(out.read_text())
    flag = report["flag"]
    threshold = load_checkpoint(tiny_detector_checkpoint).info.ood["threshold"]
    assert flag["score"] == "mahalanobis-layers" and flag["threshold"] == threshold
    assert set(flag["fpr"]) == {"gaussian", "uniform", "extra"} and 0 <= flag["tpr"] <= 1
    assert flag["fpr"]["gaussian"] <= 0.2  # Gaussian noise: measured 50 of 50 flagged with this detector
    assert report["methods_model"]["flag"] == str(tiny_detector_checkpoint)
    # Without a calibrated flag the method is reported missing, not guessed.
    assert cli("ood-eval", "--model", str(TINY), "--data", str(files["in"]), "--n", "8", "--methods", "flag,msp",
               "--sets", "gaussian", "--bootstrap", "0", "--json", str(out)) == 0
    report = json.loads(out.read_text())
    assert report["flag"] is None and "ood-calibrate" in report["missing"]["flag"]
    assert "flag" not in report["sets"]["gaussian"]


def test_ood_eval_flag_of_a_d_x_calibration_is_the_safespot_score(files: dict[str, Path], tmp_path: Path) -> None:
    path = _calibratable(tmp_path, mu=0.6, threshold=0.4, search={"preset": "fast"})
    out = tmp_path / "flag.json"
    assert cli("ood-eval", "--model", str(path), "--data", str(files["in"]), "--n", "8", "--n-ood", "6",
               "--methods", "flag,safespot", "--sets", "gaussian", *SEARCH, "--bootstrap", "0",
               "--json", str(out)) == 0
    report = json.loads(out.read_text())
    assert report["sets"]["gaussian"]["flag"] == report["sets"]["gaussian"]["safespot"]
    assert report["flag"]["score"] == "safespot" and report["flag"]["threshold"] == 0.4
