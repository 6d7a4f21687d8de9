"""Which vetting set a checkpoint gets: its domain (the metadata's, else inferred from the class
names and input size of exactly one shipped set), then the operator's SAFESPOT_VETTING_DATA
(a file or a folder of <domain>.npz), then the set shipped for that domain."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import VETTING_DIR
from tests.conftest import FIXTURES, REPO
from training.data import CIFAR10_CLASSES
from worker.vetting_sets import (
    Domain,
    VettingSet,
    checkpoint_domain,
    for_model,
    load_set,
    misfit,
    shipped_sets,
    vetting_set,
)

CIFAR_SIZE = (3, 32, 32)
TOY_NAMES = [f"shape {i}" for i in range(5)]


def write_set(path: Path, n: int = 10, classes: int = 5, size: int = 32, **extra: np.ndarray) -> Path:
    """A small vetting set: random images, labels cycling over `classes`."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"x": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                              "y": np.arange(n) % classes, **extra}
    np.savez(path, **arrays)
    return path


def test_the_shipped_cifar10_set_knows_its_domain_classes_and_size() -> None:
    sets = shipped_sets()
    assert "cifar10" in sets and {p.stem for p in VETTING_DIR.glob("*.npz")} == set(sets)
    cifar = sets["cifar10"]
    assert cifar.shipped and cifar.domain == "cifar10" and cifar.path == VETTING_DIR / "cifar10.npz"
    assert cifar.class_names == tuple(CIFAR10_CLASSES) and cifar.x.shape == (300, 32, 32, 3)
    assert np.bincount(cifar.y).tolist() == [30] * 10  # class-balanced, as made


def test_the_maker_script_writes_what_the_worker_reads() -> None:
    spec = importlib.util.spec_from_file_location("make_vetting_set", REPO / "scripts" / "make_vetting_set.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.CLASS_NAMES == CIFAR10_CLASSES and script.OUT == VETTING_DIR / "cifar10.npz"
    # every k-th image of each class, interleaved: any prefix is balanced too
    picks = script.select(np.repeat(np.arange(10), 50), per_class=3)
    assert picks.tolist()[:10] == [c * 50 for c in range(10)] and len(set(picks.tolist())) == 30


def test_the_domain_comes_from_the_metadata_else_from_the_classes() -> None:
    assert checkpoint_domain("toy-shapes", TOY_NAMES, CIFAR_SIZE) == Domain("toy-shapes", "metadata")
    assert checkpoint_domain("", CIFAR10_CLASSES, CIFAR_SIZE) == Domain("cifar10", "classes")
    other_names = checkpoint_domain("", [str(i) for i in range(10)], CIFAR_SIZE)
    assert isinstance(other_names, str) and "no domain" in other_names and "cifar10" in other_names
    bigger = checkpoint_domain("", CIFAR10_CLASSES, (3, 64, 64))
    assert isinstance(bigger, str) and "(3, 64, 64)" in bigger


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "cifar10/../x", "CIFAR10", "a" * 65, ".hidden"])
def test_a_domain_cannot_name_a_path(hostile: str) -> None:
    refused = checkpoint_domain(hostile, CIFAR10_CLASSES, CIFAR_SIZE)
    assert isinstance(refused, str) and "invalid domain" in refused


def test_without_the_operator_s_data_the_shipped_set_is_used(tmp_path: Path) -> None:
    assert vetting_set("cifar10", None) is shipped_sets()["cifar10"]
    unknown = vetting_set("toy-shapes", None)
    assert isinstance(unknown, str) and "no vetting set for domain 'toy-shapes'" in unknown
    assert "toy-shapes.npz" in unknown  # says how an operator adds one
    missing = vetting_set("cifar10", tmp_path / "nowhere")
    assert isinstance(missing, str) and "neither a file nor a folder" in missing


def test_an_operator_file_serves_its_declared_domain_or_any_when_it_declares_none(tmp_path: Path) -> None:
    plain = FIXTURES / "cifar10_mini.npz"  # x_test/y_test, no domain, no class names
    chosen = vetting_set("cifar10", plain)
    assert isinstance(chosen, VettingSet) and chosen.path == plain and not chosen.shipped
    assert len(chosen.x) == 200 and "SAFESPOT_VETTING_DATA" in chosen.label
    toy = write_set(tmp_path / "larger.npz", domain=np.array("toy-shapes"))
    declared = vetting_set("toy-shapes", toy)
    assert isinstance(declared, VettingSet) and declared.path == toy and declared.domain == "toy-shapes"
    assert vetting_set("cifar10", toy) is shipped_sets()["cifar10"]  # another domain's file: shipped


def test_an_operator_folder_holds_one_set_per_domain(tmp_path: Path) -> None:
    folder = tmp_path / "vetting"
    toy = write_set(folder / "toy-shapes.npz")
    chosen = vetting_set("toy-shapes", folder)
    assert isinstance(chosen, VettingSet) and chosen.path == toy
    assert vetting_set("cifar10", folder) is shipped_sets()["cifar10"]  # not in the folder: shipped
    write_set(folder / "cifar10.npz", classes=10)
    overriding = vetting_set("cifar10", folder)
    assert isinstance(overriding, VettingSet) and overriding.path == folder / "cifar10.npz"
    write_set(folder / "mislabelled.npz", domain=np.array("toy-shapes"))
    wrong = vetting_set("mislabelled", folder)
    assert isinstance(wrong, str) and "declares domain 'toy-shapes'" in wrong


def test_unreadable_and_malformed_sets_are_refused_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert "not a readable" in str(load_set(tmp_path / "junk.npz"))
    np.savez(tmp_path / "pickled.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    assert "not a readable" in str(load_set(tmp_path / "pickled.npz"))  # never unpickled
    np.savez(tmp_path / "floats.npz", x=np.zeros((2, 32, 32, 3), np.float32), y=np.zeros(2, np.int64))
    assert "uint8" in str(load_set(tmp_path / "floats.npz"))
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((2, 32, 32, 3), np.uint8))
    assert "no x/y arrays" in str(load_set(tmp_path / "nolabels.npz"))
    np.savez(tmp_path / "negative.npz", x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([0, -1]))
    assert "non-negative" in str(load_set(tmp_path / "negative.npz"))


def test_a_set_that_does_not_fit_the_model_says_why(tmp_path: Path) -> None:
    cifar = shipped_sets()["cifar10"]
    assert misfit(cifar, 10, CIFAR10_CLASSES, CIFAR_SIZE) is None
    assert misfit(cifar, 10, [], CIFAR_SIZE) is None  # a model without names: the count decides
    assert "64" in str(misfit(cifar, 10, CIFAR10_CLASSES, (3, 64, 64)))
    assert "labels up to 9" in str(misfit(cifar, 5, CIFAR10_CLASSES[:5], CIFAR_SIZE))
    assert "not the model's" in str(misfit(cifar, 10, [str(i) for i in range(10)], CIFAR_SIZE))
    unnamed = load_set(write_set(tmp_path / "unnamed.npz", classes=4))
    assert isinstance(unnamed, VettingSet) and "4 classes, the model 5" in str(misfit(unnamed, 5, TOY_NAMES, CIFAR_SIZE))


def test_for_model_returns_the_set_or_the_skipped_entry(tmp_path: Path) -> None:
    chosen = for_model("", 10, CIFAR10_CLASSES, CIFAR_SIZE, None)
    assert not isinstance(chosen, dict)
    assert chosen[0] is shipped_sets()["cifar10"] and chosen[1] == Domain("cifar10", "classes")
    unknown = for_model("toy-shapes", 5, TOY_NAMES, CIFAR_SIZE, None)
    assert unknown == {"skipped": vetting_set("toy-shapes", None), "domain": "toy-shapes",
                       "domain_from": "metadata"}
    nameless = for_model("", 5, TOY_NAMES, CIFAR_SIZE, None)
    assert isinstance(nameless, dict) and nameless["domain"] is None and "no domain" in str(nameless["skipped"])
    too_big = for_model("cifar10", 10, CIFAR10_CLASSES, (3, 64, 64), None)
    assert isinstance(too_big, dict) and too_big["domain"] == "cifar10" and "64" in str(too_big["skipped"])


def test_an_operator_file_without_a_domain_leaves_the_models_it_does_not_fit_their_shipped_set(
        tmp_path: Path) -> None:
    bigger = write_set(tmp_path / "bigger.npz", classes=10, size=64)  # declares no domain
    chosen = for_model("cifar10", 10, CIFAR10_CLASSES, CIFAR_SIZE, bigger)
    assert not isinstance(chosen, dict) and chosen[0] is shipped_sets()["cifar10"]
    fitting = for_model("", 10, [], (3, 64, 64), bigger)  # no domain: not vetted on anything
    assert isinstance(fitting, dict) and "no domain" in str(fitting["skipped"])
    odd = for_model("odd", 10, [], (3, 64, 64), bigger)
    assert not isinstance(odd, dict) and odd[0].path == bigger


def test_the_shipped_cifar10_model_is_vetted_on_the_cifar10_set_under_any_file_name(tmp_path: Path) -> None:
    # The domain comes from the metadata or the classes, never the file's name: the CIFAR-10
    # model was shipped as `default` and is `cifar10` now, with the same bytes.
    from models import resolve
    from models.checkpoint import read_info

    source = resolve("cifar10")
    copies = [source, tmp_path / "default.safetensors", tmp_path / "anything.safetensors"]
    for copy in copies[1:]:
        copy.write_bytes(source.read_bytes())
    for path in copies:
        info = read_info(path)
        chosen = for_model(info.domain, info.num_classes, info.class_names, info.input_size, None)
        assert isinstance(chosen, tuple), (path.name, chosen)
        vset, domain = chosen
        assert domain.name == "cifar10" and vset is shipped_sets()["cifar10"]


def test_the_shipped_tinyimagenet_set_is_the_photo_models_domain() -> None:
    tiny = shipped_sets()["tinyimagenet"]
    assert tiny.domain == "tinyimagenet" and tiny.x.shape == (400, 32, 32, 3) and len(tiny.class_names) == 200
    assert np.bincount(tiny.y).tolist() == [2] * 200 and tiny.y[:200].tolist() == list(range(200))
    assert tiny.class_names[0] == "goldfish, Carassius auratus"
    assert checkpoint_domain("", list(tiny.class_names), (3, 32, 32)) == Domain("tinyimagenet", "classes")
