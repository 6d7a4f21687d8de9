"""The dependency rules of the architecture (layers below), checked on the source (every import statement).

    safespot  <- models <- training <- worker    service talks to workers only through Redis
    safespot: torch, numpy (scipy for the certification's binomial tests, scikit-learn for
              the OOD metrics; torchattacks, an optional extra, for the evaluation yardstick only),
              and of models only the torch-free models.formats (the paper's budgets, shared with the API)
    models:   safespot, torch (+ safetensors; torchvision and timm for architectures by name)
    training: safespot, models, torch, numpy, PIL (the trainer and its data sets)
    worker:   safespot, models, training, rq, redis (+ the wire contract, image and HTTP helpers)
    service:  rq, redis, pydantic, fastapi ... never torch, never the computing packages
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

STDLIB = set(sys.stdlib_module_names) | {"__future__"}
# The parts of worker/ the API shares: the contract, its errors, the settings base, the log format.
# What each may import besides the standard library (no torch, nothing that computes).
TORCH_FREE: dict[str, set[str]] = {
    "worker.protocol": set(),
    "worker.errors": {"worker.protocol"},
    "worker.settings": {"worker.protocol", "pydantic", "pydantic_settings", "redis"},
    "worker.logs": {"pythonjsonlogger"},
    "worker.registry": {"worker.errors", "worker.protocol", "models.formats"},
    "models.formats": set(),  # the container sniffers and the recorded-threat rule the API uses
    "worker.registry_stores": {"redis", "worker.protocol", "worker.registry"},
    "worker.rq_compat": {"rq", "redis"},  # RQ's internals, for both sides
}
TORCH_FREE_WORKER = tuple(TORCH_FREE)
ALLOWED: dict[str, set[str]] = {
    # torchattacks: the yardstick's optional extra, imported only when a suite needs it;
    # sklearn: the OOD metrics (safespot/ood_eval.py).
    # models.formats: the paper's budgets, written once where the API can read them without torch.
    "safespot": {"safespot", "torch", "numpy", "scipy", "torchattacks", "sklearn", "models.formats"},
    # timm/torchvision: architectures by name (never their downloaded weights).
    "models": {"models", "safespot", "torch", "torchvision", "timm", "safetensors"},
    # httpx: `safespot data download` (training/fetch.py) fetches the public archives.
    "training": {"training", "safespot", "models", "torch", "numpy", "PIL", "tqdm", "httpx"},
    "worker": {"worker", "training", "safespot", "models", "torch", "numpy", "rq", "redis", "PIL", "httpx",
               "pydantic", "pydantic_settings", "prometheus_client", "pythonjsonlogger"},
    "service": {"service", *TORCH_FREE_WORKER, "fastapi", "fastapi_offline", "starlette", "pydantic",
                "pydantic_settings", "rq", "redis", "PIL", "prometheus_client", "anyio", "uvicorn",
                "multipart", "python_multipart", "httpx", "pythonjsonlogger"},
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


def _allowed(name: str, allowed: set[str]) -> bool:
    top = name.split(".")[0]
    return top in STDLIB or top in allowed or any(name == a or name.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_design_allows(package: str) -> None:
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name in _imports(path):
            if not _allowed(name, ALLOWED[package]):
                offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert not offenders, "imports outside the design's rules:\n" + "\n".join(offenders)


@pytest.mark.parametrize("package", ["safespot", "models", "training", "worker", "service", "safespot_cli"])
def test_installed_packages_never_import_the_benchmarks_or_the_tests(package: str) -> None:
    # bench/ and tests/ are not installed: `safespot bench` runs `python -m bench` as a child.
    for path in (REPO / package).rglob("*.py"):
        for name in _imports(path):
            assert name.split(".")[0] not in ("bench", "tests"), f"{path.relative_to(REPO)}: {name}"


def test_service_uses_only_the_torch_free_parts_of_worker() -> None:
    for path in (REPO / "service").rglob("*.py"):
        for name in _imports(path):
            if name.split(".")[0] == "worker":
                assert name in TORCH_FREE, f"{path}: {name}"
    for module, allowed in TORCH_FREE.items():
        for name in _imports(REPO / Path(*module.split(".")).with_suffix(".py")):
            assert _allowed(name, allowed), f"{module} must stay free of torch and the worker: {name}"


def test_algorithm_package_does_no_io_setup() -> None:
    # The method is pure computation: no logging configuration, no file or network access.
    for path in (REPO / "safespot").rglob("*.py"):
        text = path.read_text()
        for banned in ("logging.basicConfig", "open(", "requests.", "urllib", ".cuda()"):
            assert banned not in text, f"{path.relative_to(REPO)} uses {banned!r}"


def test_cli_help_imports_no_torch() -> None:
    code = ("import sys; from safespot_cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'safespot', 'models')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
