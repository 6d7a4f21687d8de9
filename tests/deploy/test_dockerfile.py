"""Static checks of the Dockerfile and .dockerignore: stages and targets,
no torch in the API image, pins matching pyproject, non-root users with
health checks, no baked-in secrets, COPY sources inside the build context.

No container engine runs where these tests run, so nothing is built: the
file is parsed and checked against the repository.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from typing import Any

import pytest

from tests.deploy.artefacts import (
    API_PORT,
    DOCKERIGNORE,
    METRICS_PORT,
    NON_ROOT_UID,
    REPO,
    dockerfile_instructions,
    dockerfile_stages,
)


# -------------------------------------------------------------- Dockerfile
def stage_closure(stages: dict[str, dict[str, Any]], name: str) -> list[str]:
    """The stage and every stage it is built FROM or COPYs --from."""
    seen: list[str] = []
    todo = [name]
    while todo:
        stage = todo.pop()
        if stage in seen or stage not in stages:
            continue
        seen.append(stage)
        todo.append(stages[stage]["from"])
        for word, rest in stages[stage]["instructions"]:
            m = re.search(r"--from=(\S+)", rest) if word == "COPY" else None
            if m:
                todo.append(m.group(1))
    return seen


def dockerfile_args() -> dict[str, str]:
    args = {}
    for word, rest in dockerfile_instructions():
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip().strip('"')
    return args


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"not exec form: {rest}"
    return value


def test_dockerfile_has_base_api_and_worker_targets() -> None:
    stages = dockerfile_stages()
    assert {"base", "api", "worker"} <= stages.keys()
    assert stages["api"]["from"] == "base" or "base" in stage_closure(stages, "api")
    assert "base" in stage_closure(stages, "worker")
    base_image = stages["base"]["from"]
    if base_image.startswith("${"):
        base_image = dockerfile_args()[base_image.strip("${}")]
    assert base_image.startswith("python:3.11-slim")


def test_dockerfile_base_turns_pip_cache_off() -> None:
    base = dockerfile_stages()["base"]["instructions"]
    env = " ".join(rest for word, rest in base if word == "ENV")
    assert re.search(r"PIP_NO_CACHE_DIR=(1|true|on)", env)


def test_api_image_does_not_install_torch() -> None:
    stages = dockerfile_stages()
    for stage in stage_closure(stages, "api"):
        for word, rest in stages[stage]["instructions"]:
            if word in {"RUN", "ARG", "ENV"}:
                assert "torch" not in rest.lower(), f"stage {stage}: {word} {rest}"
    installs = [rest for s in stage_closure(stages, "api")
                for word, rest in stages[s]["instructions"]
                if word == "RUN" and "pip install" in rest]
    assert installs, "the api image installs nothing"
    assert any(re.search(r"pip install\s+(\.|\"\.\"|'\.')(\s|$)", rest) for rest in installs), installs


def test_worker_image_installs_the_torch_extra_and_pins_match_pyproject() -> None:
    stages = dockerfile_stages()
    installs = " ".join(rest for s in stage_closure(stages, "worker")
                        for word, rest in stages[s]["instructions"] if word == "RUN")
    assert ".[torch]" in installs
    assert "TORCH_INDEX_URL" in installs, "an index URL for torch must be selectable"
    pyproject = (REPO / "pyproject.toml").read_text()
    args = dockerfile_args()
    for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        pinned = re.search(rf'"{package}==([^"]+)"', pyproject)
        assert pinned, f"{package} is not pinned in pyproject.toml"
        assert args.get(arg) == pinned.group(1), f"ARG {arg} differs from pyproject's {package} pin"


@pytest.mark.parametrize(("target", "command", "port"), [
    ("api", ["safespot", "serve", "--host", "0.0.0.0", "--port", str(API_PORT)], API_PORT),
    ("worker", ["safespot", "worker"], METRICS_PORT),
])
def test_final_stages_run_as_non_root_with_healthcheck(target: str, command: list[str], port: int) -> None:
    instructions = dockerfile_stages()[target]["instructions"]
    users = [rest for word, rest in instructions if word == "USER"]
    assert users, f"{target}: no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user == NON_ROOT_UID, "k8s manifests use runAsUser 10001"
    assert any(word == "HEALTHCHECK" for word, _ in instructions), f"{target}: no HEALTHCHECK"
    cmds = [exec_form(rest) for word, rest in instructions if word == "CMD"]
    assert cmds and cmds[-1] == command
    exposed = " ".join(rest for word, rest in instructions if word == "EXPOSE")
    assert str(port) in exposed.split()


def test_dockerfile_bakes_in_no_secret() -> None:
    for word, rest in dockerfile_instructions():
        if word in {"ENV", "ARG"}:
            assert not re.search(r"(KEY|SECRET|PASSWORD|TOKEN)S?\s*=", rest, re.IGNORECASE), rest
        if word == "COPY":
            assert ".env" not in rest.split()


def dockerignore_patterns() -> list[str]:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def dockerignored(rel: str) -> bool:
    """Whether .dockerignore keeps `rel` out of the build context (simplified
    matcher: enough for the plain patterns this repository uses)."""
    ignored = False
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        candidates = prefixes
        if pat.startswith("**/"):
            pat = pat[3:]
            candidates = [p for prefix in prefixes for p in _suffixes(prefix)]
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            ignored = not negate
    return ignored


def _suffixes(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources = []
    for word, rest in dockerfile_instructions():
        if word != "COPY" or "--from=" in rest:
            continue
        args = [a for a in rest.split() if not a.startswith("--")]
        sources.extend(args[:-1])
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: missing from the repository"
        assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"


def test_packages_in_pyproject_are_copied_into_the_images() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    include = tomllib.loads(pyproject)["tool"]["setuptools"]["packages"]["find"]["include"]
    top_level = {name.split(".")[0].rstrip("*") for name in include}
    assert "service" in top_level and "worker" in top_level
    copied = " ".join(rest for word, rest in dockerfile_instructions() if word == "COPY")
    for package in top_level:
        assert re.search(rf"(^|\s){package}(/|\s)", copied), f"package {package} not copied"
    readme = re.search(r'readme\s*=\s*"([^"]+)"', pyproject)
    if readme:
        assert readme.group(1) in copied.split(), "pip install . needs the readme"


def test_dockerignore_keeps_out_local_state() -> None:
    for rel in (".git", ".venv", "runs", "runs/x/ckpt.pt", ".env", "tests/fixtures",
                "artifacts", "service/__pycache__/app.cpython-311.pyc", ".pytest_cache"):
        assert dockerignored(rel), f"{rel} would be sent to the Docker daemon"
    for rel in ("pyproject.toml", "README.md", "models/zoo/default.safetensors", "models/zoo/cifar10.safetensors",
                "service/static"):
        assert not dockerignored(rel), f"{rel} is needed in the build context"
