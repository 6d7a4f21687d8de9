"""`safespot import`: a foreign checkpoint in, our safetensors checkpoint (and a JSON report) out."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from models.architectures import build_network
from models.checkpoint import load_checkpoint
from models.normalize import Classifier
from safespot_cli import main
from tests.models.foreign_checkpoints import robustness_library

MADRY_MEAN, MADRY_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def safespot(*argv: str | Path) -> int:
    return main.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def tiny_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("timm:test_resnet", num_classes=3).eval()


def test_a_robustness_library_checkpoint_round_trips(tmp_path: Path, tiny_resnet: torch.nn.Module,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    state = tiny_resnet.state_dict()
    torch.save(robustness_library(state, MADRY_MEAN, MADRY_STD), tmp_path / "madry.ckpt")
    (tmp_path / "classes.txt").write_text("cat\ndog\n\nbird\n")
    out = tmp_path / "out" / "madry.safetensors"
    code = safespot("import", tmp_path / "madry.ckpt", "-o", out, "--arch", "timm:test_resnet",
                    "--classes", tmp_path / "classes.txt", "--input-size", "64", "--view", "resize-crop:80",
                    "--json", tmp_path / "report.json")
    assert code == 0
    printed = capsys.readouterr().out
    assert "robustness-library layout" in printed and "prefix 'module.model.' stripped" in printed
    assert "the file's normaliser" in printed and "shorter side resized to 80, centre 64x64 crop" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    # dropped: the attacker's copy of the network and of the normaliser, and the normaliser (read)
    assert report["layout"] == "robustness-library" and report["keys_dropped"] == len(state) + 4
    loaded = load_checkpoint(out)
    assert loaded.sha256 == report["sha256"] and loaded.info.name == "madry"
    assert loaded.info.class_names == ["cat", "dog", "bird"] and loaded.info.input_size == (3, 64, 64)
    assert loaded.info.view == {"kind": "resize-crop", "resize": 80, "crop": 64}
    assert loaded.info.mean == pytest.approx(MADRY_MEAN) and loaded.info.std == pytest.approx(MADRY_STD)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), Classifier(tiny_resnet, MADRY_MEAN, MADRY_STD).eval()(x),
                                   atol=1e-5, rtol=1e-4)


def test_a_torchvision_state_dict_gets_imagenet_defaults(tmp_path: Path) -> None:
    torch.save(build_network("torchvision:resnet18", num_classes=1000).state_dict(), tmp_path / "r18.pth")
    assert safespot("import", tmp_path / "r18.pth", "-o", tmp_path / "r18.safetensors",
                    "--arch", "torchvision:resnet18", "--name", "my-r18", "--json", "-") == 0
    info = load_checkpoint(tmp_path / "r18.safetensors").info
    assert info.num_classes == 1000 and info.class_names[0] == "tench" and info.input_size == (3, 224, 224)
    assert info.view == {"kind": "resize-crop", "resize": 256, "crop": 224} and info.name == "my-r18"
    assert info.mean == pytest.approx([0.485, 0.456, 0.406]) and info.recipe["layout"] == "state-dict"


def test_our_own_architectures_keep_the_whole_image_resize(tmp_path: Path) -> None:
    torch.save(build_network("cifar_cnn", num_classes=10, width=4, hidden=16).state_dict(), tmp_path / "c.pt")
    assert safespot("import", tmp_path / "c.pt", "-o", tmp_path / "c.safetensors", "--arch", "cifar_cnn",
                    "--arch-arg", "width=4", "--arch-arg", "hidden=16", "--classes", "10",
                    "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25") == 0
    info = load_checkpoint(tmp_path / "c.safetensors").info
    assert info.view == {"kind": "resize"} and info.input_size == (3, 32, 32) and info.class_names == []
    assert info.arch_args == {"width": 4, "hidden": 16} and info.mean == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(("extra", "message"), [
    (["--arch", "timm:not_a_model"], "timm has no classification architecture"),
    (["--arch", "timm:test_resnet", "--view", "fisheye"], "expected resize, resize-crop"),
    (["--arch", "timm:test_resnet", "--classes", "nowhere.txt"], "not 'imagenet', a number or a file"),
    (["--arch", "timm:test_resnet", "--input-size", "64", "--view", "resize-crop:48"], "crop <= resize"),
    (["--arch", "torchvision:resnet18", "--classes", "3", "--input-size", "64"], "do not fit the architecture"),
    (["--arch", "timm:test_resnet", "--arch-arg", "checkpoint_path=/etc/passwd"], "not allowed"),
])
def test_mistakes_are_usage_errors_without_a_traceback(
        tmp_path: Path, tiny_resnet: torch.nn.Module, capsys: pytest.CaptureFixture[str],
        extra: list[str], message: str) -> None:
    torch.save(tiny_resnet.state_dict(), tmp_path / "w.pt")
    assert safespot("import", tmp_path / "w.pt", "-o", tmp_path / "o.safetensors", "--classes", "3", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("safespot import: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "o.safetensors").exists()


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"model": Payload()}, protocol=2))
    assert safespot("import", tmp_path / "evil.pt", "-o", tmp_path / "o.safetensors",
                    "--arch", "timm:test_resnet", "--classes", "3") == 2
    assert "not a plain tensor state dict" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "o.safetensors").exists()


def test_wnids_are_recorded_in_class_order_and_must_fit_the_classes(
        tmp_path: Path, tiny_resnet: torch.nn.Module, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(tiny_resnet.state_dict(), tmp_path / "w.pt")
    # ImageNet's LOC_synset_mapping.txt layout: the wnid, then the names
    (tmp_path / "synsets.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\n\nn01484850 great white shark\n")
    out = tmp_path / "o.safetensors"
    assert safespot("import", tmp_path / "w.pt", "-o", out, "--arch", "timm:test_resnet", "--classes", "3",
                    "--input-size", "64", "--wnids", tmp_path / "synsets.txt") == 0
    assert load_checkpoint(out).info.wnids == ["n01440764", "n01443537", "n01484850"]
    (tmp_path / "two.txt").write_text("n01440764\nn01443537\n")
    assert safespot("import", tmp_path / "w.pt", "-o", tmp_path / "bad.safetensors", "--arch", "timm:test_resnet",
                    "--classes", "3", "--input-size", "64", "--wnids", tmp_path / "two.txt") == 2
    assert "'wnids' must be 3 distinct non-empty strings" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()
