"""Static checks of docker-compose.yml and its GPU and monitoring overrides:
services, targets, commands, ports, health checks, settings, secrets and
the shared checkpoint volume.  Compose itself cannot run here.
"""

from __future__ import annotations

import re

from tests.deploy.artefacts import (
    API_PORT,
    CHECKPOINT_DIR,
    COMPOSE,
    COMPOSE_GPU,
    COMPOSE_MONITORING,
    DATA_DIR,
    DATA_INIT_COMMAND,
    DEPLOY,
    METRICS_PORT,
    REPO,
    TRAIN_QUEUE,
    compose_services,
    dockerfile_stages,
    is_interpolated,
    load_yaml,
    volume_source,
)

# ------------------------------------------------------------------ compose
REQUIRED_SERVICES = {"redis", "api", "worker", "trainer", "prometheus"}


def test_compose_has_the_services_images_and_targets() -> None:
    services = compose_services(COMPOSE)
    assert services.keys() >= REQUIRED_SERVICES
    assert services["redis"]["image"].startswith("redis:7")
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    expected = {"api": "api", "worker": "worker", "trainer": "worker"}
    stages = dockerfile_stages()
    for name, target in expected.items():
        build = services[name]["build"]
        assert build["target"] == target and target in stages
        assert (REPO / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).is_file()


def test_compose_commands_ports_and_health() -> None:
    services = compose_services(COMPOSE)
    assert services["api"]["command"] == ["safespot", "serve", "--host", "0.0.0.0", "--port", str(API_PORT)]
    assert services["worker"]["command"] == ["safespot", "worker"]
    assert services["trainer"]["command"] == ["safespot", "worker", "--queues", TRAIN_QUEUE]
    assert any(str(p).endswith(f":{API_PORT}") for p in services["api"]["ports"])
    for name in ("api", "worker", "trainer"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "healthcheck" in services[name]
    assert "healthcheck" in services["redis"]
    # Scalable: no fixed container name, no host port.
    for name in ("worker", "trainer"):
        assert "container_name" not in services[name]
        assert "ports" not in services[name]
        assert str(METRICS_PORT) in [str(p) for p in services[name]["expose"]]


def test_compose_settings_and_secrets() -> None:
    services = compose_services(COMPOSE)
    for name in ("api", "worker", "trainer"):
        env = services[name]["environment"]
        assert env["SAFESPOT_REDIS_URL"].startswith("redis://redis:")
        assert env["SAFESPOT_CHECKPOINT_DIR"] == CHECKPOINT_DIR
        assert str(env["SAFESPOT_METRICS_PORT"]) == str(METRICS_PORT)
    for path in (COMPOSE, COMPOSE_GPU, COMPOSE_MONITORING):
        for name, service in compose_services(path).items():
            env = service.get("environment") or {}
            assert isinstance(env, dict), f"{path.name}:{name}: use a mapping for environment"
            for key, value in env.items():
                if re.search(r"KEYS?$|PASSWORD|SECRET|TOKEN", key):
                    assert is_interpolated(value), f"{path.name}:{name}: {key} is written in the file"
    # Client keys are required: an empty SAFESPOT_API_KEYS leaves the API open.
    assert services["api"]["environment"]["SAFESPOT_API_KEYS"].startswith("${SAFESPOT_API_KEYS:?")


def test_compose_checkpoint_volume_is_shared() -> None:
    doc = load_yaml(COMPOSE)
    assert "checkpoints" in doc["volumes"]
    for name in ("api", "worker", "trainer"):
        mounts = [volume_source(v) for v in doc["services"][name]["volumes"]]
        assert ("checkpoints", CHECKPOINT_DIR) in mounts, name


def test_data_init_fills_the_data_volume_before_the_trainer_starts() -> None:
    from safespot_cli.main import build_parser

    services = compose_services(COMPOSE)
    init = services["data-init"]
    assert init["command"] == DATA_INIT_COMMAND
    build_parser().parse_args(init["command"][1:])  # a command the image's CLI has
    assert init["build"]["target"] == "worker" and init["image"] == services["worker"]["image"]
    assert init["restart"] == "no" and "healthcheck" not in init
    assert init["environment"]["SAFESPOT_DATA_DIR"] == DATA_DIR
    assert ("data", DATA_DIR) in [volume_source(v) for v in init["volumes"]]
    # Only the trainer waits for the download: filter workers serve with what the image
    # ships, so a deployment that cannot reach the archive still filters.
    assert "data-init" not in services["worker"]["depends_on"]
    assert services["trainer"]["depends_on"]["data-init"]["condition"] == "service_completed_successfully"
    for name in ("worker", "trainer"):
        assert services[name]["environment"]["SAFESPOT_DATA_DIR"] == DATA_DIR
        assert ("data", DATA_DIR) in [volume_source(v) for v in services[name]["volumes"]], name
    # The API sees the same files, read only, to refuse a training job without data.
    assert services["api"]["environment"]["SAFESPOT_DATA_DIR"] == DATA_DIR
    assert f"data:{DATA_DIR}:ro" in services["api"]["volumes"]
    assert "data" in load_yaml(COMPOSE)["volumes"]


def test_compose_files_reference_only_existing_files() -> None:
    """Bind mounts, build contexts and required env files, relative to the
    project directory (the repository root, the folder of the first -f file)."""
    base = compose_services(COMPOSE)
    for path in (COMPOSE, COMPOSE_GPU, COMPOSE_MONITORING):
        doc = load_yaml(path)
        named = set((load_yaml(COMPOSE).get("volumes") or {}).keys()) | set((doc.get("volumes") or {}).keys())
        for name, service in doc["services"].items():
            for spec in service.get("volumes", []):
                source, _ = volume_source(spec)
                if source.startswith((".", "/")):
                    assert (REPO / source).exists(), f"{path.name}:{name}: {source} missing"
                else:
                    assert source in named, f"{path.name}:{name}: volume {source} not declared"
            for env_file in service.get("env_file", []) or []:
                if isinstance(env_file, dict) and env_file.get("required") is False:
                    continue
                file = env_file["path"] if isinstance(env_file, dict) else env_file
                assert (REPO / file).exists(), f"{path.name}:{name}: env file {file} missing"
            for dep in service.get("depends_on", []) or []:
                assert dep in base or dep in doc["services"], f"{path.name}:{name}: unknown {dep}"
        if path is not COMPOSE:
            extra = set(doc["services"]) - set(base)
            for name in extra:
                assert "image" in doc["services"][name] or "build" in doc["services"][name]
    assert (DEPLOY / "env.example").is_file()


def test_gpu_override_reserves_an_nvidia_gpu_for_worker_and_trainer() -> None:
    services = compose_services(COMPOSE_GPU)
    assert set(services) == {"worker", "trainer"}
    for name in ("worker", "trainer"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1
        device = devices[0]
        assert device["driver"] == "nvidia"
        assert device["count"] == 1
        assert "gpu" in device["capabilities"]


def test_monitoring_override_provisions_grafana() -> None:
    grafana = compose_services(COMPOSE_MONITORING)["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    mounts = dict(volume_source(v) for v in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_target = mounts["./deploy/grafana/safespot-dashboard.json"]
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "safespot.yml")
    paths = [p["options"]["path"] for p in provider["providers"]]
    assert any(dashboard_target.startswith(p.rstrip("/") + "/") for p in paths)
    datasources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
