"""`safespot filter`: files and folders in, `<name>.safe.png` and a JSON report out.

Runs in-process through `safespot_cli.main.main` (exit codes included) with the tiny
model and small crops of the fixture photographs, so each run takes seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from safespot_cli import main
from tests.conftest import PHOTOS, REPO, TINY_MODEL
from worker.protocol import FilterResult

EPS_LEVELS = 16
FAST = ["--model", str(TINY_MODEL), "--preset", "fast", "--eps", f"{EPS_LEVELS}/255", "--threads", "1"]


@pytest.fixture(autouse=True)
def no_model_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAFESPOT_DEFAULT_MODEL", raising=False)


def safespot(*argv: str | Path) -> int:
    return main.main([str(a) for a in argv])


def crop(name: str, box: tuple[int, int, int, int]) -> Image.Image:
    with Image.open(PHOTOS / name) as im:
        return im.convert("RGB").crop(box)


def shrunk(name: str, factor: int) -> Image.Image:
    """The whole photograph, scaled down (whole scenes are what the tiny model has to protect)."""
    with Image.open(PHOTOS / name) as im:
        return im.convert("RGB").reduce(factor)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of small real images in several formats and modes, one in a subfolder,
    one that is not an image, and last run's output (to be ignored)."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shrunk("chelsea.jpg", 4).save(folder / "cat.jpg", quality=92)
    shrunk("coffee.webp", 8).convert("L").save(folder / "gray.png")
    rgba = shrunk("astronaut.png", 8).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    rgba.save(folder / "alpha.png")
    crop("coffee.webp", (300, 200, 600, 400)).reduce(5).save(folder / "sub" / "cup.webp", quality=90)
    (folder / "notes.jpg").write_bytes(b"these are notes, not a JPEG")
    (folder / "old.safe.png").write_bytes(b"an output of an earlier run")
    return folder


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im, dtype=np.int16)


def assert_within_budget(source: Path, output: Path, result: dict[str, Any]) -> None:
    with Image.open(source) as original, Image.open(output) as out:
        assert out.format == "PNG" and out.size == original.size
        assert out.mode == original.mode  # grey stays grey, alpha stays alpha
    before, after = pixels(source), pixels(output)
    colour = slice(0, 1 if before.ndim == 2 or before.shape[-1] <= 2 else 3)
    if before.ndim == 3 and before.shape[-1] in (2, 4):  # alpha is never perturbed
        assert np.array_equal(before[..., -1], after[..., -1])
    change = np.abs(after - before)[..., colour] if before.ndim == 3 else np.abs(after - before)
    assert change.max() <= EPS_LEVELS
    assert change.max() == round(result["linf"] * 255)


def test_a_folder_tree_gives_safe_pngs_with_the_same_names_and_a_report(
        photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    status = safespot("filter", photos, "-o", out, "--recursive", "--json", report_path, *FAST)
    captured = capsys.readouterr()
    assert status == 1  # notes.jpg is not an image; everything else is written

    expected = {"cat.safe.png", "gray.safe.png", "alpha.safe.png", "sub/cup.safe.png"}
    assert {str(p.relative_to(out)) for p in out.rglob("*.png")} == expected
    assert "skipping" in captured.err and "notes.jpg" in captured.err and "unsupported_format" in captured.err
    assert "4 of 5 images written" in captured.out and "cat.safe.png" in captured.out
    assert "'found' means these attacks failed on the written image: pgd-20" in captured.out

    report = json.loads(report_path.read_text())
    assert report["summary"]["images"] == 5 and report["summary"]["written"] == 4
    assert report["summary"]["failed"] == 1
    assert report["model"]["sha256"] and report["settings"]["preset"] == "fast"
    assert all(e["result"]["verification"]["runs"] for e in report["files"] if e["status"] == "ok")
    assert report["settings"]["eps"] == pytest.approx(EPS_LEVELS / 255)
    by_input = {Path(e["input"]).name: e for e in report["files"]}
    assert by_input["notes.jpg"]["status"] == "error"
    assert by_input["notes.jpg"]["error"]["code"] == "unsupported_format"
    for name, source in (("cat.jpg", photos / "cat.jpg"), ("gray.png", photos / "gray.png"),
                         ("alpha.png", photos / "alpha.png"), ("cup.webp", photos / "sub" / "cup.webp")):
        entry = by_input[name]
        assert entry["status"] == "ok" and Path(entry["output"]).is_file()
        result = entry["result"]
        assert set(FilterResult.__annotations__) <= result.keys()  # the service's result shape
        with Image.open(source) as original:
            assert (result["image"]["width"], result["image"]["height"]) == original.size
        assert_within_budget(source, Path(entry["output"]), result)  # Pillow decodes as the intake does
    assert any(e.get("result", {}).get("linf") for e in report["files"]), "nothing changed: a vacuous test"
    cat_top5 = by_input["cat.jpg"]["result"]["prediction"]["top5"]
    assert len(cat_top5) == 5  # the tiny model's 10 classes: its five most probable, under the image's line
    ranked = "\n".join(f"    {rank}. {e['class_name']}  {100 * e['probability']:.1f}%"
                        for rank, e in enumerate(cat_top5, 1))
    assert f"cat.safe.png  {cat_top5[0]['class_name']} (" in captured.out and ranked in captured.out


def test_one_image_to_a_png_file_with_the_report_on_stdout(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "photo.png"
    shrunk("chelsea.jpg", 4).save(source)
    target = tmp_path / "published" / "protected.png"
    assert safespot("filter", source, "-o", target, *FAST, "--json") == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout holds the report and nothing else
    entry = report["files"][0]
    assert entry["status"] == "ok" and entry["output"] == str(target)
    assert_within_budget(source, target, entry["result"])
    assert "1 of 1 images written" in captured.err


def test_same_names_from_different_formats_do_not_overwrite_each_other(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crop("chelsea.jpg", (0, 0, 40, 32)).save(tmp_path / "pic.png")
    crop("coffee.webp", (0, 0, 40, 32)).save(tmp_path / "pic.bmp")
    out = tmp_path / "out"
    assert safespot("filter", tmp_path / "pic.png", tmp_path / "pic.bmp", "-o", out, *FAST) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pic.bmp.safe.png", "pic.png.safe.png"]


@pytest.mark.parametrize(("args", "message"), [
    (["{photo}", "-o", "{tmp}/out.jpg"], "would be a .jpg file: write PNG"),
    (["{photo}", "{photo2}", "-o", "{tmp}/out.png"], "there are 2 images: give a folder"),
    (["{tmp}/missing.jpg", "-o", "{tmp}/out"], "no images to filter"),
    (["{photo}", "--json", "{photo2}", "-o", "{tmp}/out"], "looks like an image, not a report"),
    (["{photo}", "-o", "{photo}"], "is also an input"),
    (["{photo}", "-o", "{tmp}/out", "--model", "{tmp}/nothing.safetensors"], "no checkpoint file"),
])
def test_usage_errors_say_what_to_do_and_exit_2(
        args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crop("chelsea.jpg", (0, 0, 32, 32)).save(tmp_path / "a.png")
    crop("chelsea.jpg", (32, 0, 64, 32)).save(tmp_path / "b.png")
    argv = [a.format(photo=tmp_path / "a.png", photo2=tmp_path / "b.png", tmp=tmp_path) for a in args]
    assert safespot("filter", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and "safespot filter: error:" in err
    assert not list(tmp_path.glob("out*"))


def test_a_folder_without_images_and_a_bad_eps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    (empty / "deeper").mkdir(parents=True)
    crop("chelsea.jpg", (0, 0, 32, 32)).save(empty / "deeper" / "x.png")
    assert safespot("filter", empty, "-o", tmp_path / "out", *FAST) == 2
    assert "no image files in this folder (subfolders are skipped without --recursive)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        safespot("filter", empty, "-o", tmp_path / "out", "--eps", "eight")
    assert exit_info.value.code == 2
    assert "expected a number such as 0.0314 or 8/255" in capsys.readouterr().err


def test_help_is_instant_and_explains_with_examples() -> None:
    code = ("import argparse, sys\n"
            "from safespot_cli import filter_cmd\n"
            "p = argparse.ArgumentParser(prog='safespot')\n"
            "filter_cmd.register(p.add_subparsers(dest='command'))\n"
            "print(p._subparsers._group_actions[0].choices['filter'].format_help())\n"
            "assert 'torch' not in sys.modules, 'filter --help imported torch'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for needle in ("examples:", "OUT/photo.safe.png", "--recursive", "--json", "re-encoding it as JPEG",
                   "Exit status", "jq"):
        assert needle in text, needle


def test_without_eps_the_budget_is_the_one_the_model_was_trained_for(tmp_path: Path) -> None:
    import dataclasses

    from models.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(TINY_MODEL)
    model_path = tmp_path / "trained-at-4.safetensors"
    save_checkpoint(loaded.model, dataclasses.replace(loaded.info, threat={"norm": "linf", "eps": 4 / 255}),
                    model_path)
    crop("chelsea.jpg", (100, 40, 164, 104)).save(tmp_path / "cat.png")
    report_path = tmp_path / "report.json"
    status = safespot("filter", tmp_path / "cat.png", "-o", tmp_path / "out", "--json", report_path,
                      "--model", model_path, "--preset", "fast", "--threads", "1")
    assert status == 0
    report = json.loads(report_path.read_text())
    assert report["settings"]["eps"] == pytest.approx(4 / 255)
    assert report["files"][0]["result"]["threat"]["eps"] == pytest.approx(4 / 255)
