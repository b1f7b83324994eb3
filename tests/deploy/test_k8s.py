"""deploy/k8s: every variant renders, validates against Kubernetes 1.30, and its references line up.

Rendered twice where a kustomize is installed: by kustomize itself and by the small renderer in
``kustomize_lite`` (which is all a machine without kubectl has); both must pass every check, and
they must agree with each other.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import k8s_checks
from tests.deploy.conftest import DEPLOY, EXAMPLE, K8S, VARIANTS, render
from tests.deploy.kustomize_lite import load_yaml_documents

RENDERERS = ("lite", "kustomize")
CASES = [(v, r) for v in VARIANTS for r in RENDERERS]
CASE_IDS = [f"{v}-{r}" for v, r in CASES]
# Files under deploy/k8s that are kustomize input, not Kubernetes objects.
NOT_OBJECTS = {"kustomization.yaml", "kustomizeconfig.yaml"}


def test_every_yaml_file_under_deploy_parses() -> None:
    """Given every YAML file under deploy/, when parsed, then each is a mapping or a list."""
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 20
    for path in files:
        for doc in load_yaml_documents(path):
            assert isinstance(doc, dict | list), f"{path}: top level is {type(doc).__name__}"


def test_every_committed_object_validates_on_its_own() -> None:
    """Whole objects (not patches) validate before kustomize touches them."""
    problems: list[str] = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name in NOT_OBJECTS:
            continue
        for doc in load_yaml_documents(path):
            if isinstance(doc, list) or ("spec" not in doc and "data" not in doc):
                continue  # a JSON 6902 patch, or a strategic-merge fragment
            if path.parent.name == "redis-sentinel" or path.name.endswith("-patch.yaml"):
                continue
            problems += [f"{path.relative_to(K8S)}: {p}" for p in k8s_checks.check_schemas([doc])]
    assert problems == []


@pytest.mark.parametrize(("variant", "renderer"), CASES, ids=CASE_IDS)
def test_rendered_manifests_validate(k8s_tree: Path, variant: str, renderer: str) -> None:
    """Strict Kubernetes 1.30 schemas; the KEDA and Prometheus Operator CRD shapes."""
    resources = render(k8s_tree, variant, renderer)
    assert list(k8s_checks.check_schemas(resources)) == []


@pytest.mark.parametrize("check", k8s_checks.ALL_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(("variant", "renderer"), CASES, ids=CASE_IDS)
def test_references_line_up(k8s_tree: Path, variant: str, renderer: str, check: Any) -> None:
    """Selectors, ports, probes, grace periods, KEDA triggers and monitors agree."""
    resources = render(k8s_tree, variant, renderer)
    assert list(check(resources)) == []


@pytest.mark.parametrize(("variant", "renderer"), CASES, ids=CASE_IDS)
def test_environment_names_are_jobyard_settings(k8s_tree: Path, variant: str, renderer: str) -> None:
    """Every variable set on a role is a JOBYARD_* setting; Secret and ConfigMap keys exist."""
    resources = render(k8s_tree, variant, renderer)
    # The base has no Secret of its own: the overlay provides it.
    problems = list(k8s_checks.check_env(resources, secrets_resolved=variant != "base"))
    assert problems == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_builtin_renderer_agrees_with_kustomize(k8s_tree: Path, variant: str) -> None:
    """The fallback renderer is only trusted because it gives kustomize's output here."""
    ours = render(k8s_tree, variant, "lite")
    theirs = render(k8s_tree, variant, "kustomize")

    def key(r: dict[str, Any]) -> tuple[str, str]:
        return (r["kind"], r["metadata"]["name"])

    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    by_key = {key(r): r for r in theirs}
    for resource in ours:
        assert canonical(resource) == canonical(by_key[key(resource)]), f"{key(resource)} differs"


def canonical(node: Any) -> Any:
    """Keyed lists in key order: a strategic merge may reorder env entries, which means nothing."""
    if isinstance(node, dict):
        return {k: canonical(v) for k, v in node.items()}
    if isinstance(node, list):
        items = [canonical(v) for v in node]
        for merge_key in ("name", "mountPath"):
            if items and all(isinstance(i, dict) and merge_key in i for i in items):
                return sorted(items, key=lambda i: str(i[merge_key]))
        return items
    return node


def test_example_overlay_shape(k8s_tree: Path) -> None:
    """Namespace, image, replicas, the in-cluster Redis with AOF, KEDA; a raised worker grace."""
    resources = render(k8s_tree, "example", "lite")
    find = k8s_checks.find
    assert all(r["metadata"].get("namespace") == "jobyard" for r in resources if r["kind"] != "Namespace")
    for role, replicas in (("api", 2), ("scheduler", 2), ("worker", 3)):
        deployment = find(resources, "Deployment", f"jobyard-{role}")
        assert deployment is not None
        assert deployment["spec"]["replicas"] == replicas
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "registry.example.com/jobyard:0.1.0"
    worker = find(resources, "Deployment", "jobyard-worker")
    assert worker is not None
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90
    redis = find(resources, "StatefulSet", "redis")
    config = find(resources, "ConfigMap", "redis-config")
    assert redis is not None and config is not None
    assert "appendonly yes" in config["data"]["redis.conf"]
    assert "maxmemory-policy noeviction" in config["data"]["redis.conf"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert find(resources, "ScaledObject", "jobyard-worker") is not None
    assert find(resources, "ServiceMonitor", "jobyard") is None  # opt-in component


def test_sentinel_variant_points_every_role_at_the_sentinels(k8s_tree: Path) -> None:
    """With the redis-sentinel component the roles and KEDA use Sentinel, and no Redis pod is left."""
    resources = render(k8s_tree, "sentinel", "lite")
    config = k8s_checks.find(resources, "ConfigMap", "jobyard-config")
    assert config is not None
    assert config["data"]["JOBYARD_REDIS_SENTINELS"].count(":26379") == 3
    assert config["data"]["JOBYARD_REDIS_MASTER_NAME"]
    scaled = k8s_checks.find(resources, "ScaledObject", "jobyard-worker")
    assert scaled is not None
    assert {t["type"] for t in scaled["spec"]["triggers"]} == {"redis-sentinel"}
    assert k8s_checks.find(resources, "StatefulSet", "redis") is None
    assert k8s_checks.find(resources, "ServiceMonitor", "jobyard") is not None


def test_queue_lists_follow_the_key_layout() -> None:
    """The ScaledObject's lists are the ones jobyard.keys names for the default prefix."""
    assert k8s_checks.queue_lists() == {"jobyard:q:high", "jobyard:q:normal", "jobyard:q:low"}


def test_example_secrets_are_placeholders_and_not_committed() -> None:
    """secrets.env.example holds no usable secret; the real secrets.env is ignored by git."""
    example = K8S / EXAMPLE
    values = {}
    for line in (example / "secrets.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    assert set(values) >= {"JOBYARD_REDIS_URL", "JOBYARD_ADMIN_TOKEN", "JOBYARD_CALLBACK_SECRET"}
    for key, value in values.items():
        if key != "REDIS_ADDRESS":
            assert "CHANGE-ME" in value, f"{key} looks like a real secret"
    assert "secrets.env" in (example / ".gitignore").read_text().split()


def test_no_secret_is_written_into_a_manifest() -> None:
    """No committed Secret objects and no literal values for secret-looking variables."""
    secretish = ("TOKEN", "SECRET", "PASSWORD", "REDIS_URL")
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load_yaml_documents(path):
            if isinstance(doc, dict):
                assert doc.get("kind") != "Secret", f"{path}: Secrets come from the overlay's secretGenerator"
        text = yaml.safe_dump(load_yaml_documents(path))
        for entry in yaml.safe_load(text) or []:
            for name, value in _env_values(entry):
                if any(word in name for word in secretish):
                    assert value is None, f"{path}: {name} has a literal value"


def _env_values(node: Any) -> list[tuple[str, Any]]:
    """(name, literal value) of every env entry anywhere in a document."""
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        if "env" in node and isinstance(node["env"], list):
            out += [(e.get("name", ""), e.get("value")) for e in node["env"] if isinstance(e, dict)]
        for value in node.values():
            out += _env_values(value)
    elif isinstance(node, list):
        for value in node:
            out += _env_values(value)
    return out


def test_readme_lists_the_secret_keys_and_paths_that_exist() -> None:
    """deploy/README.md's Secret table is secrets.env.example's keys; the paths it names exist."""
    readme = (DEPLOY / "README.md").read_text()
    keys = {
        line.partition("=")[0]
        for line in (K8S / EXAMPLE / "secrets.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    table = set()
    for line in readme.splitlines():
        if line.startswith("| `") and "read by" not in line:
            table |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    assert keys <= table
    paths = re.findall(r"^\| `([a-z0-9/_.-]+)` \|", readme, flags=re.M)
    assert len(paths) >= 5
    for path in paths:
        assert (DEPLOY / path).exists(), f"README names {path}, which does not exist"
