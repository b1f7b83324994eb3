"""deploy/compose.yaml: health-gated start order, graceful stop, loopback-only ports, known settings.

Parsed and checked by hand everywhere; `docker compose config` also checks it where a Docker
client with the compose plugin is installed (it needs no daemon).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY
from tests.deploy.k8s_checks import MIN_WORKER_GRACE_SECONDS, known_env_names

COMPOSE = DEPLOY / "compose.yaml"
ROLES = ("api", "worker", "scheduler")
ROLE_PORT = {
    "api": ("JOBYARD_API_PORT", 8080),
    "worker": ("JOBYARD_METRICS_PORT", 9101),
    "scheduler": ("JOBYARD_METRICS_PORT", 9102),
}
DATA_DIR = "/var/lib/jobyard/data"
REQUIRED_ENV = {
    "JOBYARD_ADMIN_TOKEN": "compose-check-admin",
    "JOBYARD_CALLBACK_SECRET": "compose-check-callback",
    "GRAFANA_ADMIN_PASSWORD": "compose-check-grafana",
}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")
DOCKER_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file, parsed (YAML merge keys resolved)."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def duration_s(text: str) -> float:
    """A compose duration ("1m30s", "60s", "500ms") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_services_and_replicas(compose: dict[str, Any]) -> None:
    """Redis, the API, 3 workers, 2 schedulers, Prometheus and Grafana."""
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker", "scheduler", "prometheus", "grafana"}
    assert services["worker"]["deploy"]["replicas"] == 3
    assert services["scheduler"]["deploy"]["replicas"] == 2
    assert "deploy" not in services["api"] or services["api"]["deploy"].get("replicas", 1) == 1


def test_redis_keeps_an_append_only_file_on_a_volume(compose: dict[str, Any]) -> None:
    """AOF on, never evicting, on a named volume, health-checked with PING."""
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data" and volume in compose["volumes"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_every_service_is_health_checked_and_waits_for_health(compose: dict[str, Any]) -> None:
    """depends_on always waits for a healthcheck that exists."""
    services = compose["services"]
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must name a condition"
        for target, rule in depends.items():
            assert rule == {"condition": "service_healthy"}, f"{name} -> {target}: {rule}"
            assert "healthcheck" in services[target]
    for role in ROLES:
        assert "redis" in services[role]["depends_on"]


def test_role_healthchecks_probe_the_role_port(compose: dict[str, Any]) -> None:
    """Each role's check asks its own /readyz on the port its environment configures."""
    for role in ROLES:
        service = compose["services"][role]
        variable, default = ROLE_PORT[role]
        port = int(service["environment"].get(variable, default))
        test = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in test, f"{role}: {test}"


def test_grace_periods_cover_a_worker_drain(compose: dict[str, Any]) -> None:
    """A worker gets longer than the jobs' stopping_wait_time before Docker kills it."""
    services = compose["services"]
    assert duration_s(services["worker"]["stop_grace_period"]) >= MIN_WORKER_GRACE_SECONDS
    for role in ROLES:
        assert services[role]["stop_signal"] == "SIGTERM"
        assert duration_s(services[role]["stop_grace_period"]) >= 30


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    """Nothing is reachable from other machines without a proxy the operator chose."""
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
    assert published == 3  # API, Prometheus, Grafana
    for role in ("redis", "worker", "scheduler"):
        assert "ports" not in compose["services"][role]


def test_roles_are_locked_down_with_writable_data(compose: dict[str, Any]) -> None:
    """Read-only root, no capabilities, /tmp in memory, the data directory on a volume."""
    for role in ROLES:
        service = compose["services"][role]
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert "/tmp" in service["tmpfs"]
        targets = [v.split(":")[1] if ":" in v else v for v in service["volumes"]]
        assert DATA_DIR in targets, role
    # Replicas must not share one package cache and job data directory: anonymous volumes.
    assert compose["services"]["worker"]["volumes"] == [DATA_DIR]


def test_environment_names_are_jobyard_settings(compose: dict[str, Any]) -> None:
    """Every JOBYARD_* variable, set on a role or read from the shell, is a real setting."""
    known = known_env_names()
    for role in ROLES:
        for name in compose["services"][role]["environment"]:
            assert name in known, f"{role}: {name} is not a jobyard setting"
    for name in INTERPOLATION.findall(COMPOSE.read_text()):
        if name.startswith("JOBYARD_"):
            assert name in known, f"${{{name}}} is not a jobyard setting"


def test_secrets_come_from_the_environment(compose: dict[str, Any]) -> None:
    """Secrets are required interpolations, and each role gets only the ones it uses."""
    secret = re.compile(r"TOKEN|SECRET|PASSWORD")
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secret.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}: {key}={value}"
    env = {role: set(compose["services"][role]["environment"]) for role in ROLES}
    assert "JOBYARD_ADMIN_TOKEN" in env["api"]
    assert "JOBYARD_ADMIN_TOKEN" not in env["worker"] | env["scheduler"]
    assert not any(secret.search(k) for k in env["scheduler"])


def test_role_commands_parse() -> None:
    """`jobyard <role> ...` as written in the compose file is accepted by the CLI."""
    from jobyard.cli import cli

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for role in ROLES:
        args = services[role]["command"]
        assert args[0] == role
        cli.commands[role].make_context(role, list(args[1:]))


def test_monitoring_files_are_mounted_where_they_are_read(compose: dict[str, Any]) -> None:
    """Prometheus gets its config and rules, Grafana the provisioning and the dashboards path."""
    mounts: dict[str, dict[str, str]] = {}
    for name in ("prometheus", "grafana"):
        mounts[name] = {}
        for volume in compose["services"][name]["volumes"]:
            source, target, *_ = volume.split(":")
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
                mounts[name][target] = source
    prom = mounts["prometheus"]
    config = yaml.safe_load((DEPLOY / prom["/etc/prometheus/prometheus.yml"]).read_text())
    for rule_file in config.get("rule_files", []):
        assert str(Path("/etc/prometheus") / rule_file) in prom, f"rule file {rule_file} not mounted"
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/dashboards.yaml").read_text())
    paths = {p["options"]["path"] for p in providers["providers"]}
    assert paths <= set(mounts["grafana"]), f"dashboard paths {paths} not mounted"
    assert mounts["grafana"]["/etc/grafana/provisioning"] == "./grafana/provisioning"


def test_prometheus_scrapes_the_compose_services(compose: dict[str, Any]) -> None:
    """The scrape targets are these service names on the ports the roles listen on."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                targets.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            targets |= {(name, int(dns["port"])) for name in dns["names"]}
    for role in ROLES:
        variable, default = ROLE_PORT[role]
        port = int(compose["services"][role]["environment"].get(variable, default))
        assert (role, port) in targets, f"Prometheus does not scrape {role}:{port}"


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=DOCKER_TIMEOUT_S)
    return probe.returncode == 0


def test_docker_compose_accepts_the_file() -> None:
    """`docker compose config -q` (no daemon needed) where the compose plugin exists."""
    if not _compose_plugin():
        pytest.skip("no docker client with the compose plugin on PATH: hand checks only")
    env = {**os.environ, **REQUIRED_ENV}
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=DOCKER_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    # Without the secrets it refuses to start rather than run with empty tokens.
    bare = {k: v for k, v in os.environ.items() if k not in REQUIRED_ENV}
    refused = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env=bare,
        timeout=DOCKER_TIMEOUT_S,
    )
    assert refused.returncode != 0 and "JOBYARD_ADMIN_TOKEN" in refused.stderr
