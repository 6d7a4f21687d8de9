"""The deployment artefacts under test and the contract they must keep.

Paths of the Dockerfile, compose files, Prometheus, Grafana and Kubernetes
files; every metric the code exports with its type and labels; ports, queue
names and the non-root uid; and small cached YAML parsers shared by the
per-artefact test modules beside this one (test_dockerfile, test_compose,
test_monitoring, test_k8s).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yml"
COMPOSE_MONITORING = DEPLOY / "compose.monitoring.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "safespot-dashboard.json"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# --------------------------------------------------------------- the contract
# Every metric the code exports, with its type and labels.  Alerts, dashboards
# and autoscalers may use these names only; renaming one in the code means
# changing it here and in deploy/ together.
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    # API (service/metrics.py)
    "safespot_http_requests_total": ("counter", frozenset({"route", "method", "status"})),
    "safespot_http_request_duration_seconds": ("histogram", frozenset({"route", "method"})),
    "safespot_queue_depth": ("gauge", frozenset({"queue"})),
    "safespot_jobs_submitted_total": ("counter", frozenset({"preset"})),
    "safespot_uploads_rejected_total": ("counter", frozenset({"reason"})),
    "safespot_workers_ready": ("gauge", frozenset()),
    "safespot_redis_up": ("gauge", frozenset()),
    # workers (worker/metrics.py)
    "safespot_worker_batch_size": ("histogram", frozenset()),
    "safespot_worker_jobs_total": ("counter", frozenset({"outcome", "preset", "model"})),
    "safespot_worker_queue_wait_seconds": ("histogram", frozenset()),
    "safespot_worker_job_duration_seconds": ("histogram", frozenset({"preset"})),
    "safespot_worker_search_passes_total": ("counter", frozenset({"model"})),
    "safespot_worker_safe_spots_total": ("counter", frozenset({"found", "model"})),
    "safespot_worker_ood_flags_total": ("counter", frozenset({"model"})),
    "safespot_worker_busy_seconds_total": ("counter", frozenset()),
    "safespot_worker_model_info": ("gauge", frozenset({"name", "sha256", "checkpoint_id"})),
    "safespot_training_jobs_total": ("counter", frozenset({"outcome"})),
}
# Labels that Prometheus or Kubernetes add to every series.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "service"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

API_PORT = 8000
METRICS_PORT = 9100
CHECKPOINT_DIR = "/data/checkpoints"
DATA_DIR = "/data/work"
DATA_INIT_COMMAND = ["safespot", "data", "download", "cifar10"]
K8S_NAMESPACE = "safespot"
NON_ROOT_UID = "10001"


def _protocol_constant(name: str) -> str:
    """A string constant of worker/protocol.py, read without importing it."""
    tree = ast.parse((REPO / "worker" / "protocol.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            assert isinstance(node.value, ast.Constant)
            return str(node.value.value)
    raise AssertionError(f"{name} not found in worker/protocol.py")


FILTER_QUEUE = _protocol_constant("FILTER_QUEUE")
TRAIN_QUEUE = _protocol_constant("TRAIN_QUEUE")
RQ_FILTER_LIST = f"rq:queue:{FILTER_QUEUE}"


# -------------------------------------------------------------------- helpers
# libyaml when available; parsed files are cached (tests only read them).
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=Loader)


@cache
def load_yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=Loader) if doc is not None]


def yaml_files() -> list[Path]:
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})
    return [COMPOSE, *files]


def is_interpolated(value: Any) -> bool:
    """A compose value taken from the environment (`${VAR...}`), not written in."""
    return isinstance(value, str) and re.fullmatch(r"\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}", value) is not None


def compose_services(path: Path) -> dict[str, dict[str, Any]]:
    return load_yaml(path)["services"]


def volume_source(spec: str | dict[str, Any]) -> tuple[str, str]:
    if isinstance(spec, dict):
        return str(spec["source"]), str(spec["target"])
    parts = spec.split(":")
    return parts[0], parts[1]


# -------------------------------------------------------------- Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "Dockerfile ends with a line continuation"
    out = []
    for line in logical:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_stages() -> dict[str, dict[str, Any]]:
    """Stage name -> {"from": image or stage, "instructions": [...]}."""
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, f"cannot parse FROM {rest}"
            name = m.group(2) or f"stage{len(stages)}"
            current = {"from": m.group(1), "instructions": []}
            stages[name] = current
        elif current is not None:
            current["instructions"].append((word, rest))
    return stages
