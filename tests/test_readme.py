"""The README's Python snippet runs as printed.

It is taken from the README itself, run in a fresh interpreter in an empty folder (where
the README's photo path exists), with two substitutions that keep it fast: the tiny test
model for the shipped default, the `fast` preset for `standard`.  Each must apply exactly
once, so an edit of the README that breaks the substitution fails here too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import PHOTOS, REPO, TINY_MODEL

SUBSTITUTIONS = {'load_model("default")': f"load_model({str(TINY_MODEL)!r})",
                 'SearchConfig.preset("standard"': 'SearchConfig.preset("fast"'}


def readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    assert len(blocks) == 1, f"expected one Python snippet in the README, found {len(blocks)}"
    return str(blocks[0])


def test_the_readme_snippet_runs_and_writes_a_protected_png(tmp_path: Path) -> None:
    code = readme_python()
    for original, quick in SUBSTITUTIONS.items():
        assert code.count(original) == 1, f"the README snippet no longer contains {original}"
        code = code.replace(original, quick)
    (tmp_path / "tests" / "fixtures").mkdir(parents=True)
    (tmp_path / "tests" / "fixtures" / "photos").symlink_to(PHOTOS)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"safe spot found: (True|False) passes: \d+", done.stdout), done.stdout

    with Image.open(tmp_path / "chelsea.safe.png") as out, Image.open(PHOTOS / "chelsea.jpg") as photo:
        assert out.format == "PNG" and out.size == photo.size and out.mode == "RGB"
        change = np.abs(np.asarray(out, np.int16) - np.asarray(photo.convert("RGB"), np.int16))
    assert 0 < change.max() <= 4  # changed, within 4/255
