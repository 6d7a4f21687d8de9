"""Static checks of the Kubernetes manifests (kustomize base, GPU and HPA
overlays): well-formed objects, probes, resources, non-root, services,
the shared checkpoint claim, secrets, KEDA/HPA scaling on the RQ list.
Where a recent kubectl exists, the kustomize builds are also checked with it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.artefacts import (
    API_PORT,
    CHECKPOINT_DIR,
    DATA_DIR,
    DATA_INIT_COMMAND,
    DEPLOY,
    FILTER_QUEUE,
    K8S,
    K8S_NAMESPACE,
    METRICS_PORT,
    REPO,
    RQ_FILTER_LIST,
    TRAIN_QUEUE,
    Loader,
    load_yaml,
    load_yaml_docs,
)

# --------------------------------------------------------------- Kubernetes
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
TOP_KUSTOMIZATIONS = [K8S, K8S / "overlays" / "gpu", K8S / "overlays" / "hpa"]
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass", "PersistentVolume"}


@cache
def kustomize_tree(directory: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[Path]]:
    """Objects reached from `directory`'s kustomization (resources, components)
    and the patch files, in the spirit of `kubectl kustomize` without its
    transformations."""
    kustomization = load_yaml(directory / "kustomization.yaml")
    assert kustomization["kind"] in KUSTOMIZE_KINDS
    objects: list[tuple[Path, dict[str, Any]]] = []
    patches: list[Path] = []
    for entry in [*kustomization.get("resources", []), *kustomization.get("components", [])]:
        target = (directory / entry).resolve()
        assert target.exists(), f"{directory}: {entry} does not exist"
        if target.is_dir():
            sub_objects, sub_patches = kustomize_tree(target)
            objects += sub_objects
            patches += sub_patches
        else:
            objects += [(target, doc) for doc in load_yaml_docs(target)]
    for patch in kustomization.get("patches", []):
        assert "path" in patch, "patches are files, so that they are checked here"
        path = (directory / patch["path"]).resolve()
        assert path.is_file(), f"{directory}: patch {patch['path']} missing"
        patches.append(path)
    return objects, patches


def base_objects() -> list[dict[str, Any]]:
    return [doc for _, doc in kustomize_tree(K8S / "base")[0]]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize("top", TOP_KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(REPO)))
def test_k8s_objects_are_well_formed(top: Path) -> None:
    objects, patches = kustomize_tree(top)
    assert objects
    seen = set()
    for path, obj in objects:
        assert obj.get("apiVersion") and obj.get("kind"), path
        assert obj["kind"] not in KUSTOMIZE_KINDS, f"{path} is listed as a resource"
        assert obj["metadata"]["name"], path
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == K8S_NAMESPACE, f"{path}: {obj['kind']}"
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"{key} defined twice"
        seen.add(key)
    for patch in patches:
        for doc in load_yaml_docs(patch):
            assert (doc["kind"], doc["metadata"]["name"]) in seen, f"{patch} patches nothing"
    # Exactly one autoscaler for the workers.
    worker_scalers = [o for _, o in objects
                      if o["kind"] in {"ScaledObject", "HorizontalPodAutoscaler"}
                      and o["spec"]["scaleTargetRef"]["name"] == "safespot-worker"]
    assert len(worker_scalers) == 1


def test_every_k8s_yaml_parses_as_objects() -> None:
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load_yaml_docs(path):
            if path.name == "prometheus-adapter-values.yaml":
                assert doc["rules"]["external"]
                continue
            assert doc.get("apiVersion") and doc.get("kind"), path


def test_deployments_have_probes_resources_and_run_as_non_root() -> None:
    objects = base_objects()
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} >= {
        "safespot-api", "safespot-worker", "safespot-trainer", "safespot-redis"}
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]
        selector = spec["selector"]["matchLabels"]
        labels = spec["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{name}: selector does not match the pods"
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container["image"], name
            assert "readinessProbe" in container and "livenessProbe" in container, name
            requests = container["resources"]["requests"]
            assert "cpu" in requests and "memory" in requests, name
            assert "memory" in container["resources"]["limits"], name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name


def test_api_worker_and_trainer_contracts() -> None:
    objects = base_objects()
    (api,) = containers(find(objects, "Deployment", "safespot-api"))
    assert api["command"] == ["safespot", "serve", "--host", "0.0.0.0", "--port", str(API_PORT)]
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert ports["http"] == API_PORT
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["port"] in {"http", API_PORT}
    (worker,) = containers(find(objects, "Deployment", "safespot-worker"))
    assert worker["command"] == ["safespot", "worker"]
    (trainer,) = containers(find(objects, "Deployment", "safespot-trainer"))
    assert trainer["command"] == ["safespot", "worker", "--queues", TRAIN_QUEUE]
    for container in (worker, trainer):
        assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == METRICS_PORT
        assert container["livenessProbe"]["httpGet"]["port"] == "metrics"
    config = find(objects, "ConfigMap", "safespot-config")["data"]
    assert config["SAFESPOT_METRICS_PORT"] == str(METRICS_PORT)
    assert config["SAFESPOT_CHECKPOINT_DIR"] == CHECKPOINT_DIR
    redis_host = re.match(r"redis://([^:/]+)", config["SAFESPOT_REDIS_URL"])
    assert redis_host
    find(objects, "Service", redis_host.group(1))
    assert "safespot-worker" not in {
        o["metadata"]["name"] for o in objects if o["kind"] == "HorizontalPodAutoscaler"}, \
        "the worker's autoscaler belongs in a component"
    for name in ("safespot-worker", "safespot-api"):
        assert "replicas" not in find(objects, "Deployment", name)["spec"], \
            f"{name}: an autoscaler owns the replica count"


def test_services_select_pods_and_name_real_ports() -> None:
    objects = base_objects()
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    for service in (o for o in objects if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        matched = [d for d in deployments
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, service["metadata"]["name"]
        port_names = {p.get("name") for c in containers(matched[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, service["metadata"]["name"]


def test_checkpoints_live_on_a_shared_rwx_claim() -> None:
    objects = base_objects()
    claim = find(objects, "PersistentVolumeClaim", "safespot-checkpoints")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("safespot-api", "safespot-worker", "safespot-trainer"):
        pod = find(objects, "Deployment", name)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = volumes[mounts[CHECKPOINT_DIR]]
        assert volume["persistentVolumeClaim"]["claimName"] == "safespot-checkpoints", name


def test_the_data_volume_is_filled_by_an_init_container_and_read_by_the_api() -> None:
    objects = base_objects()
    claim = find(objects, "PersistentVolumeClaim", "safespot-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on several nodes
    assert find(objects, "ConfigMap", "safespot-config")["data"]["SAFESPOT_DATA_DIR"] == DATA_DIR

    def data_volume(pod: dict[str, Any], container: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == DATA_DIR]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == "safespot-data"
        return mount, volume

    worker = find(objects, "Deployment", "safespot-worker")["spec"]["template"]["spec"]
    assert "initContainers" not in worker  # filter workers serve without the download
    data_volume(worker, worker["containers"][0])
    for name in ("safespot-trainer",):
        pod = find(objects, "Deployment", name)["spec"]["template"]["spec"]
        (main,) = pod["containers"]
        (init,) = pod["initContainers"]
        assert init["command"] == DATA_INIT_COMMAND and init["image"] == main["image"], name
        assert {"configMapRef": {"name": "safespot-config"}} in init["envFrom"], name
        assert not data_volume(pod, init)[0].get("readOnly") and not data_volume(pod, main)[0].get("readOnly")
        assert data_volume(pod, init)[1] == data_volume(pod, main)[1], name
        assert init["securityContext"]["allowPrivilegeEscalation"] is False
        assert init["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert "memory" in init["resources"]["limits"]
    pod = find(objects, "Deployment", "safespot-api")["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    mount, volume = data_volume(pod, api)
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"]["readOnly"] is True
    assert "initContainers" not in pod  # the API image has no reason to download


def test_secrets_are_templates_and_references_resolve() -> None:
    template = K8S / "secret.example.yaml"
    secrets = {d["metadata"]["name"]: d for d in load_yaml_docs(template) if d["kind"] == "Secret"}
    for secret in secrets.values():
        for value in secret["stringData"].values():
            assert "REPLACE_ME" in value, "the template must not hold a real value"
    objects = base_objects()
    assert not [o for o in objects if o["kind"] == "Secret"], "no Secret is applied by kustomize"
    configmaps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        for container in containers(deployment):
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
    (api,) = containers(find(objects, "Deployment", "safespot-api"))
    keys = [s["secretRef"] for s in api["envFrom"] if s.get("secretRef", {}).get("name") == "safespot-keys"]
    assert keys and not keys[0].get("optional", False)
    assert {"SAFESPOT_API_KEYS", "SAFESPOT_ADMIN_KEYS"} <= secrets["safespot-keys"]["stringData"].keys()


def test_keda_scaled_object_targets_the_worker_on_the_rq_list() -> None:
    objects = [o for _, o in kustomize_tree(K8S / "components" / "keda")[0]]
    scaled = find(objects, "ScaledObject", "safespot-worker")
    assert scaled["apiVersion"].startswith("keda.sh/")
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and target["name"] == "safespot-worker"
    find(base_objects(), "Deployment", target["name"])
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert scaled["spec"]["maxReplicaCount"] > scaled["spec"]["minReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert meta["listName"] == RQ_FILTER_LIST
    assert int(meta["listLength"]) > 0 and isinstance(meta["listLength"], str)
    host = meta["address"].split(":")[0].split(".")[0]
    find(base_objects(), "Service", host)


def test_hpa_alternative_scales_the_worker_on_queue_depth() -> None:
    objects = [o for _, o in kustomize_tree(K8S / "components" / "hpa")[0]]
    hpa = find(objects, "HorizontalPodAutoscaler", "safespot-worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "safespot-worker"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "safespot_queue_depth"
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {"queue": FILTER_QUEUE}
    values = load_yaml(K8S / "components" / "hpa" / "prometheus-adapter-values.yaml")
    (rule,) = values["rules"]["external"]
    assert "safespot_queue_depth" in rule["seriesQuery"]
    assert rule["metricsQuery"].startswith("max("), "API replicas report the same depth: max, not sum"
    assert "prometheus-adapter" in (K8S / "components" / "hpa" / "kustomization.yaml").read_text()


def test_gpu_component_adds_a_gpu_to_worker_and_trainer() -> None:
    _, patches = kustomize_tree(K8S / "components" / "gpu")
    patched = {}
    for patch in patches:
        for doc in load_yaml_docs(patch):
            for container in containers(doc):
                patched[doc["metadata"]["name"]] = (container["name"], container["resources"]["limits"])
    objects = base_objects()
    for name in ("safespot-worker", "safespot-trainer"):
        container_name, limits = patched[name]
        assert limits["nvidia.com/gpu"] == 1
        assert container_name in {c["name"] for c in containers(find(objects, "Deployment", name))}


def test_kustomize_images_match_the_containers() -> None:
    kustomization = load_yaml(K8S / "base" / "kustomization.yaml")
    names = {image["name"] for image in kustomization["images"]}
    used = {c["image"] for o in base_objects() if o["kind"] == "Deployment" for c in containers(o)}
    assert names == {"safespot-api", "safespot-worker"} and names <= used


def test_deploy_readme_covers_compose_k8s_and_object_storage() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for phrase in ("docker compose", "compose.gpu.yml", "kubectl apply -k", "KEDA",
                   "prometheus-adapter", "object storage", "SAFESPOT_CHECKPOINT_DIR"):
        assert phrase in readme, phrase



# kubectl is not in every Debian image (Debian's 1.20 client predates kustomize components):
# this check runs where a recent kubectl exists (it does on the CI machine) and says so otherwise.
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("top", TOP_KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(REPO)))
def test_kubectl_kustomize_builds(top: Path) -> None:
    done = subprocess.run(["kubectl", "kustomize", str(top)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    objects = [d for d in yaml.load_all(done.stdout, Loader=Loader) if d]
    assert all(o["metadata"].get("namespace") == K8S_NAMESPACE
               for o in objects if o["kind"] not in CLUSTER_SCOPED)
    if top.name == "gpu":
        worker = find(objects, "Deployment", "safespot-worker")
        assert containers(worker)[0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "readinessProbe" in containers(worker)[0], "the patch must not drop the probes"
