"""Rendered Kubernetes variants of deploy/k8s, by this repository's renderer and by kustomize."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import kustomize_lite
from tests.deploy.kustomize_lite import Resource
from tests.helpers import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
EXAMPLE = "overlays/example"
# The variants the README documents: the base alone, the example overlay as committed, and the
# example switched to Sentinel with the Prometheus Operator, as its comments describe.
VARIANTS = ("base", "example", "sentinel")
KUSTOMIZE_TIMEOUT_S = 60


def kustomize_command() -> list[str] | None:
    """A real kustomize: the standalone binary, or the one built into kubectl."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        probe = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


def _sentinel_variant(tree: Path) -> None:
    """overlays/sentinel: the example with the in-cluster Redis swapped for Sentinel."""
    source = tree / EXAMPLE
    target = tree / "overlays" / "sentinel"
    shutil.copytree(source, target)
    spec = yaml.safe_load((target / "kustomization.yaml").read_text())
    spec["resources"] = [r for r in spec["resources"] if r not in ("redis.yaml", "redis-networkpolicy.yaml")]
    spec["components"] = [
        "../../components/keda",
        "../../components/servicemonitor",
        "../../components/redis-sentinel",
    ]
    (target / "kustomization.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


@pytest.fixture(scope="session")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/k8s with secrets.env made from the example, plus the Sentinel variant."""
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("secrets.env"))
    example = tree / EXAMPLE
    shutil.copy(example / "secrets.env.example", example / "secrets.env")
    _sentinel_variant(tree)
    return tree


def variant_dir(tree: Path, variant: str) -> Path:
    """The kustomization directory of a variant."""
    return tree / ("base" if variant == "base" else f"overlays/{variant}")


GENERATED_SUFFIX = re.compile(r"\b(jobyard-secrets)-[a-z0-9]{10}\b")


def normalise_kustomize(text: str) -> list[Resource]:
    """kustomize output without the generated names' hash suffix, Secret data decoded."""
    docs = [d for d in yaml.safe_load_all(GENERATED_SUFFIX.sub(r"\1", text)) if d]
    for doc in docs:
        if doc.get("kind") == "Secret":
            doc["data"] = {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
    return docs


_CACHE: dict[tuple[str, str], list[Resource]] = {}


def render(tree: Path, variant: str, renderer: str) -> list[Resource]:
    """The resources of a variant, rendered once per session by "lite" or "kustomize"."""
    key = (variant, renderer)
    if key not in _CACHE:
        directory = variant_dir(tree, variant)
        if renderer == "lite":
            _CACHE[key] = kustomize_lite.build(directory)
        else:
            command = kustomize_command()
            if command is None:
                pytest.skip("no kustomize or kubectl on PATH: checked with the built-in renderer only")
            done = subprocess.run(
                [*command, str(directory)], capture_output=True, text=True, timeout=KUSTOMIZE_TIMEOUT_S
            )
            assert done.returncode == 0, done.stderr
            _CACHE[key] = normalise_kustomize(done.stdout)
    return _CACHE[key]
