"""The package builds without a single setuptools warning, and the wheel carries its data.

Built the way pip builds it (setuptools' PEP 517 backend, here called directly so that
only setuptools speaks), in a copy of the working tree so that no build/ or egg-info
folder appears in the checkout.  Both the wheel (`pip install .`, the Docker images)
and the editable wheel (`pip install -e .`, scripts/test) are built.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Any warning class (SetuptoolsDeprecationWarning, _Warning, ...) or distutils' "warning:" line.
WARNING = re.compile(r"warning", re.IGNORECASE)
BUILD = """
import sys
from setuptools import build_meta
out = sys.argv[1]
print("WHEEL", build_meta.build_wheel(out))
print("EDITABLE", build_meta.build_editable(out))
"""


def tree_files() -> list[str]:
    """What a checkout holds: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO, check=True, capture_output=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(everything the build printed, the wheel) for a copy of the tree plus a vetting set."""
    source = tmp_path_factory.mktemp("source")
    for name in tree_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    # A vetting set as another data folder of the package would be (models/vetting/<domain>.npz).
    (source / "models" / "vetting").mkdir(exist_ok=True)
    (source / "models" / "vetting" / "packaging-test.npz").write_bytes(b"PK\x05\x06" + bytes(18))
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # no "byte-compiling is disabled" notice
    done = subprocess.run([sys.executable, "-c", BUILD, str(out)], cwd=source, env=env,
                          capture_output=True, text=True, timeout=300)
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-4000:]
    wheel = out / next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("WHEEL"))
    return printed, wheel


def test_the_build_prints_no_warning(built: tuple[str, Path]) -> None:
    printed, _ = built
    warnings = [line for line in printed.splitlines() if WARNING.search(line)]
    assert not warnings, "setuptools warned:\n" + "\n".join(warnings[:40])


def test_the_editable_install_is_a_static_path_entry(built: tuple[str, Path]) -> None:
    """setuptools' other editable strategy (an import finder) prints an "Editable installation"
    BuildBackendWarning on every install with newer pip; the static .pth strategy does not."""
    printed, _ = built
    assert "Editable install will be performed using .pth file" in printed
    assert "careful with folders in your working directory" not in printed


def test_the_wheel_carries_the_models_the_page_and_the_vetting_sets(built: tuple[str, Path]) -> None:
    _, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    zoo = {n for n in names if n.startswith("models/zoo/")}
    expected_zoo = {f"models/zoo/{p.name}" for p in (REPO / "models" / "zoo").iterdir()
                    if p.suffix in (".safetensors", ".md", ".json")}
    assert {"models/zoo/default.safetensors", "models/zoo/cifar10.safetensors"} <= zoo
    assert expected_zoo <= zoo
    static = {f"service/static/{p.name}" for p in (REPO / "service" / "static").iterdir() if p.is_file()}
    assert "service/static/index.html" in static and static <= names
    assert "models/vetting/packaging-test.npz" in names
    assert not any(n.startswith(("tests/", "bench/", "deploy/")) for n in names)
