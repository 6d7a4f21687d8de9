"""`safespot data download|import|list` against small archives in the real formats,
served from a local HTTP server (no internet here): conversion, resume after a cut
transfer, sha256 refusal leaving nothing behind, offline copies, hostile pickles."""

from __future__ import annotations

import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from safespot_cli import data_cmd
from safespot_cli.errors import UsageError
from tests.cli.clikit import make_cli
from tests.training.archive_fixtures import (
    CIFAR_CLASSES,
    TINY_WORDS,
    ArchiveServer,
    cifar_archive,
    colour,
    sha256,
    tiny_archive,
)
from training.data import DataError, load_dataset
from training.public_data import LOCK_NAME, SETS, download_set, import_copy
from worker.protocol import TRAINING_DATA

cli = make_cli(data_cmd)
CIFAR_PATH = "/files/cifar-10-python.tar.gz"


pytestmark = pytest.mark.usefixtures("no_safespot_env")  # no mirror settings from the developer


@pytest.fixture
def cifar(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    archive = tmp_path / "src" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    return archive, cifar_archive(archive)


def leftovers(data_dir: Path) -> set[str]:
    return {p.name for p in data_dir.iterdir()} - {LOCK_NAME}


def assert_cifar_converted(data_dir: Path, expected: dict[str, np.ndarray]) -> None:
    for split in ("train", "test"):
        with np.load(data_dir / f"cifar10_{split}.npz", allow_pickle=False) as f:
            assert f["x"].dtype == np.uint8 and f["x"].shape == (len(expected[f"y_{split}"]), 32, 32, 3)
            np.testing.assert_array_equal(f["x"], expected[f"x_{split}"])
            np.testing.assert_array_equal(f["y"], expected[f"y_{split}"])
            assert f["y"].dtype == np.int64 and list(f["class_names"]) == CIFAR_CLASSES
    data = load_dataset("cifar10", "train", data_dir)  # what the trainer reads
    assert len(data) == 20 and data.class_names == CIFAR_CLASSES
    assert "CIFAR-10" in data.provenance["note"] and "JPEG" not in data.provenance["note"]


def test_download_converts_cifar10_and_list_reports_it(tmp_path, cifar, capsys) -> None:
    archive, expected = cifar
    data_dir = tmp_path / "data"
    with ArchiveServer({CIFAR_PATH: archive.read_bytes()}) as server:
        assert cli("data", "download", "cifar10", "--data-dir", str(data_dir), "--url", server.url(CIFAR_PATH),
                   "--sha256", sha256(archive), "--quiet") == 0
        assert_cifar_converted(data_dir, expected)
        assert leftovers(data_dir) == {"cifar10_train.npz", "cifar10_test.npz"}  # archive removed
        assert (data_dir / "cifar10_train.npz").stat().st_mode & 0o777 == 0o644  # readable by the API's uid too
        capsys.readouterr()
        assert cli("data", "download", "cifar10", "--data-dir", str(data_dir), "--url", server.url(CIFAR_PATH),
                   "--sha256", sha256(archive), "--quiet") == 0
        assert "already in" in capsys.readouterr().out and len(server.requests) == 1
    assert cli("data", "list", "--data-dir", str(data_dir), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sets"]["cifar10"]["present"] and not report["sets"]["tinyimagenet"]["present"]
    assert report["sets"]["cifar10"]["files"][0]["x"] == {"shape": [20, 32, 32, 3], "dtype": "uint8"}
    assert cli("data", "status", "--data-dir", str(data_dir)) == 0
    assert "tinyimagenet: missing (safespot data download tinyimagenet)" in capsys.readouterr().out


def test_an_interrupted_transfer_resumes_with_a_range_request(tmp_path, cifar) -> None:
    archive, expected = cifar
    body = archive.read_bytes()
    data_dir = tmp_path / "data"
    with ArchiveServer({CIFAR_PATH: body}, cut_after=1000, cuts=1) as server:
        with pytest.raises(UsageError, match="run the command again to resume"):
            cli("data", "download", "cifar10", "--data-dir", str(data_dir), "--url", server.url(CIFAR_PATH),
                "--sha256", sha256(archive), "--quiet", "--retries", "0")
        part = data_dir / "cifar-10-python.tar.gz.part"
        assert part.stat().st_size == 1000 and part.read_bytes() == body[:1000]
        assert cli("data", "download", "cifar10", "--data-dir", str(data_dir), "--url", server.url(CIFAR_PATH),
                   "--sha256", sha256(archive), "--quiet") == 0
        assert [r for _, r in server.requests] == [None, "bytes=1000-"]
    assert_cifar_converted(data_dir, expected)
    assert not part.exists()


def test_cuts_are_resumed_within_one_run_and_a_server_ignoring_range_restarts(tmp_path, cifar) -> None:
    archive, expected = cifar
    with ArchiveServer({CIFAR_PATH: archive.read_bytes()}, cut_after=700, cuts=2) as server:
        download_set("cifar10", tmp_path / "a", url=server.url(CIFAR_PATH), sha256=sha256(archive),
                     progress=False, retries=2, retry_wait_s=0)
        assert [r for _, r in server.requests] == [None, "bytes=700-", "bytes=1400-"]
    assert_cifar_converted(tmp_path / "a", expected)
    with ArchiveServer({CIFAR_PATH: archive.read_bytes()}, cut_after=700, cuts=1, honour_range=False) as server:
        download_set("cifar10", tmp_path / "b", url=server.url(CIFAR_PATH), sha256=sha256(archive),
                     progress=False, retries=1, retry_wait_s=0)
    assert_cifar_converted(tmp_path / "b", expected)


def test_a_sha256_mismatch_is_refused_and_leaves_nothing(tmp_path, cifar) -> None:
    archive, _ = cifar
    data_dir = tmp_path / "data"
    with ArchiveServer({CIFAR_PATH: archive.read_bytes()}) as server:
        with pytest.raises(UsageError, match=r"sha256 [0-9a-f]{64} \(md5 [0-9a-f]{32}\) is not the expected "
                                             + SETS["cifar10"].sha256 + ".*deleted"):
            cli("data", "download", "cifar10", "--data-dir", str(data_dir), "--url", server.url(CIFAR_PATH),
                "--quiet")  # the published archive's sha256: the fixture is not it
        assert leftovers(data_dir) == set()
        with pytest.raises(UsageError, match="HTTP 404"):
            cli("data", "download", "cifar10", "--data-dir", str(data_dir), "--url", server.url("/nothing"),
                "--quiet")
    assert leftovers(data_dir) == set()


def test_the_mirror_settings_are_read_from_the_environment(tmp_path, cifar, monkeypatch) -> None:
    archive, expected = cifar
    with ArchiveServer({CIFAR_PATH: archive.read_bytes()}) as server:
        monkeypatch.setenv("SAFESPOT_CIFAR10_URL", server.url(CIFAR_PATH))
        monkeypatch.setenv("SAFESPOT_CIFAR10_SHA256", sha256(archive).upper())
        monkeypatch.setenv("SAFESPOT_DATA_DIR", str(tmp_path / "env-data"))
        assert cli("data", "download", "cifar10", "--quiet") == 0
    assert_cifar_converted(tmp_path / "env-data", expected)


def test_import_an_offline_archive_or_its_extracted_folder(tmp_path, cifar) -> None:
    archive, expected = cifar
    with pytest.raises(UsageError, match=f"pass --sha256 {sha256(archive)}"):
        cli("data", "import", str(archive), "--data-dir", str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()  # checked before anything is written
    assert cli("data", "import", str(archive), "--data-dir", str(tmp_path / "a"), "--sha256", sha256(archive)) == 0
    assert_cifar_converted(tmp_path / "a", expected)
    assert archive.exists()  # an import never removes the user's copy

    extracted = tmp_path / "extracted"
    with tarfile.open(archive) as tar:
        tar.extractall(extracted, filter="data")
    for source in (extracted, extracted / "cifar-10-batches-py"):
        out = tmp_path / f"from-{source.name}"
        assert import_copy(source, out)[0] == "cifar10"
        assert_cifar_converted(out, expected)
    with pytest.raises(UsageError, match="not a copy of"):
        cli("data", "import", str(tmp_path / "a"), "--data-dir", str(tmp_path / "x"))


class Boom:
    def __reduce__(self):  # runs os.system("...") when unpickled by plain pickle
        return (os.system, ("touch pwned",))


def test_a_batch_that_would_run_code_is_refused(tmp_path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    cifar_archive(archive, batch_pickle=pickle.dumps({"data": Boom(), "labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os)\.system"):
        import_copy(archive, tmp_path / "data", sha256=sha256(archive))
    assert leftovers(tmp_path / "data") == set() and not Path("pwned").exists()


def test_tiny_imagenet_train_and_val_at_64_with_wnids_and_names(tmp_path) -> None:
    archive = tmp_path / "src" / "tiny-imagenet-200.zip"
    archive.parent.mkdir()
    counts = tiny_archive(archive)
    data_dir = tmp_path / "data"
    with ArchiveServer({"/tiny.zip": archive.read_bytes()}) as server:
        assert cli("data", "download", "tinyimagenet", "--data-dir", str(data_dir), "--url",
                   server.url("/tiny.zip"), "--sha256", sha256(archive), "--quiet") == 0
    wnids = sorted(["n03000134", "n01443537", "n02124075"])
    for split in ("train", "val"):
        with np.load(data_dir / f"tinyimagenet_{split}.npz", allow_pickle=False) as f:
            x, y = f["x"], f["y"]
            assert x.shape == (counts[split], 64, 64, 3) and x.dtype == np.uint8 and y.dtype == np.int64
            assert list(f["wnids"]) == wnids and list(f["class_names"]) == [TINY_WORDS[w] for w in wnids]
        assert sorted(np.bincount(y).tolist()) == [counts[split] // 3] * 3
        for image, label in zip(x, y, strict=True):  # each class its colour (one train image is grey)
            mean = image.reshape(-1, 3).mean(0)
            assert np.abs(mean - colour(int(label))).max() < 8 or np.ptp(mean) < 1
    data = load_dataset("tinyimagenet", "train", data_dir)
    assert data.class_names[0] == "goldfish, Carassius auratus" and len(data) == counts["train"]
    assert len(load_dataset("tinyimagenet", "test", data_dir)) == counts["val"]  # held out: val
    other = tmp_path / "imported"
    assert import_copy(archive, other, sha256=sha256(archive))[0] == "tinyimagenet"
    with np.load(other / "tinyimagenet_val.npz") as a, np.load(data_dir / "tinyimagenet_val.npz") as b:
        np.testing.assert_array_equal(a["x"], b["x"])


def test_the_api_check_looks_for_what_download_writes() -> None:
    for name, files in TRAINING_DATA.items():
        assert files[0] in SETS[name].outputs


def test_the_data_command_needs_no_torch() -> None:
    """So that it runs in any image (the init step) and starts at once."""
    import subprocess
    import sys

    code = "import sys, safespot_cli.data_cmd, training.public_data; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stderr


def test_tiny_imagenet_import_leaves_out_added_classes_and_shrinks_by_box_average(tmp_path) -> None:
    archive = tmp_path / "tiny-imagenet-200.zip"
    counts = tiny_archive(archive)
    full, small = tmp_path / "full", tmp_path / "small"
    import_copy(archive, full, sha256=sha256(archive))
    assert cli("data", "import", str(archive), "--sha256", sha256(archive), "--data-dir", str(small),
               "--exclude-classes", "n02124075", "--size", "32") == 0
    for split in ("train", "val"):
        with np.load(full / f"tinyimagenet_{split}.npz") as a, np.load(small / f"tinyimagenet_{split}.npz") as b:
            kept = a["wnids"][a["y"]] != "n02124075"
            assert list(b["wnids"]) == ["n01443537", "n03000134"] and len(b["y"]) == counts[split] * 2 // 3
            assert list(b["wnids"][b["y"]]) == list(a["wnids"][a["y"]][kept])  # the same images, relabelled
            assert b["x"].shape[1:] == (32, 32, 3) and "n02124075" in str(b["source"])
            box = a["x"][kept].reshape(-1, 32, 2, 32, 2, 3).astype(np.float64).mean((2, 4))
            assert np.abs(b["x"].astype(np.float64) - box).max() <= 0.5


def test_excluding_a_class_the_copy_lacks_or_from_cifar_is_refused(tmp_path) -> None:
    archive = tmp_path / "tiny-imagenet-200.zip"
    tiny_archive(archive)
    with pytest.raises(DataError, match="not classes of this copy"):
        import_copy(archive, tmp_path / "a", sha256=sha256(archive), exclude=frozenset({"n09999999"}))
    cifar = tmp_path / "cifar-10-python.tar.gz"
    cifar_archive(cifar)
    with pytest.raises(DataError, match="Tiny ImageNet only"):
        import_copy(cifar, tmp_path / "b", sha256=sha256(cifar), size=16)
