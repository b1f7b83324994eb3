"""A small kustomize, enough for the layout of ``deploy/k8s``, for machines without kustomize.

It resolves what that tree uses, the way kustomize does: ``resources`` (files and directories),
``components``, ``namespace``, ``images``, ``replicas``, ``secretGenerator`` and
``configMapGenerator`` (``envs``, ``literals``), ``patches`` (a strategic-merge file or an RFC 6902
list, with or without a ``target``) and ``configurations`` (accepted: they only matter for hash
suffixes, which this renderer does not add, so generated names stay as written). Any other field
raises, so a kustomize feature added to ``deploy/k8s`` cannot slip past the checks unrendered.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "images",
    "replicas",
    "secretGenerator",
    "configMapGenerator",
    "patches",
    "configurations",
}
# Kinds without a namespace (the ones deploy/k8s may use).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
# API groups whose objects kustomize patches with strategic merge (lists merged by key);
# custom resources get a JSON merge patch, where a list in the patch replaces the whole list.
BUILTIN_GROUPS = {
    "",
    "apps",
    "policy",
    "batch",
    "autoscaling",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}


class KustomizeError(ValueError):
    """The kustomization uses something this renderer does not support, or is inconsistent."""


def load_yaml_documents(path: Path) -> list[Resource]:
    """Every non-empty YAML document of a file."""
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def find_kustomization(directory: Path) -> Path:
    """The kustomization file of a directory."""
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise KustomizeError(f"{directory} has no kustomization.yaml")


def group_of(resource: Resource) -> str:
    """The API group of a resource ("" for the core group)."""
    api_version = str(resource.get("apiVersion", ""))
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def build(directory: Path) -> list[Resource]:
    """Render the kustomization in ``directory`` (a Kustomization, not a Component)."""
    return _build(Path(directory).resolve(), expect_component=False, parent=None)


def _build(directory: Path, *, expect_component: bool, parent: list[Resource] | None) -> list[Resource]:
    spec = load_yaml_documents(find_kustomization(directory))[0]
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    is_component = spec.get("kind") == "Component"
    if is_component != expect_component:
        raise KustomizeError(f"{directory}: kind {spec.get('kind')!r} used in the wrong place")

    # A component works on the resources of the kustomization that lists it.
    resources: list[Resource] = parent if parent is not None else []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            resources.extend(_build(target, expect_component=False, parent=None))
        elif target.is_file():
            resources.extend(load_yaml_documents(target))
        else:
            raise KustomizeError(f"{directory}: resource {entry!r} does not exist")
    for entry in spec.get("components", []):
        target = (directory / entry).resolve()
        if not target.is_dir():
            raise KustomizeError(f"{directory}: component {entry!r} does not exist")
        _build(target, expect_component=True, parent=resources)
    for entry in spec.get("configurations", []):
        if not (directory / entry).is_file():
            raise KustomizeError(f"{directory}: configuration {entry!r} does not exist")

    resources.extend(_generate(directory, spec))
    for patch in spec.get("patches", []):
        _apply_patch(directory, resources, patch)
    if "namespace" in spec:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        _set_image(resources, image)
    for replica in spec.get("replicas", []):
        _set_replicas(resources, replica)
    return resources


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise KustomizeError(f"env file {path} does not exist")
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise KustomizeError(f"{path}: line {line!r} is not KEY=value")
        out[key.strip()] = value
    return out


def _generate(directory: Path, spec: Resource) -> list[Resource]:
    out: list[Resource] = []
    for field, kind in (("secretGenerator", "Secret"), ("configMapGenerator", "ConfigMap")):
        for gen in spec.get(field, []):
            unknown = set(gen) - {"name", "envs", "literals", "options", "type"}
            if unknown:
                raise KustomizeError(f"{directory}: unsupported {field} fields {sorted(unknown)}")
            data: dict[str, str] = {}
            for env in gen.get("envs", []):
                data.update(_read_env_file(directory / env))
            for literal in gen.get("literals", []):
                key, _, value = literal.partition("=")
                data[key] = value
            # kustomize base64-encodes Secret data; plain strings here (the tests decode its output).
            resource: Resource = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
            resource["data"] = data
            if kind == "Secret":
                resource["type"] = gen.get("type", "Opaque")
            out.append(resource)
    return out


def _matches(resource: Resource, target: dict[str, Any]) -> bool:
    unknown = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unknown:
        raise KustomizeError(f"unsupported patch target fields {sorted(unknown)}")
    meta = resource.get("metadata", {})
    checks = {
        "group": group_of(resource),
        "kind": resource.get("kind"),
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "version": str(resource.get("apiVersion", "")).rsplit("/", 1)[-1],
    }
    return all(checks[key] == value for key, value in target.items())


def _apply_patch(directory: Path, resources: list[Resource], patch: dict[str, Any]) -> None:
    unknown = set(patch) - {"path", "patch", "target"}
    if unknown:
        raise KustomizeError(f"{directory}: unsupported patch fields {sorted(unknown)}")
    if "path" in patch:
        path = directory / patch["path"]
        if not path.is_file():
            raise KustomizeError(f"{directory}: patch {patch['path']!r} does not exist")
        body: Any = load_yaml_documents(path)
        body = body[0] if len(body) == 1 else body
    else:
        body = yaml.safe_load(patch["patch"])
    target = patch.get("target")
    if isinstance(body, list):  # RFC 6902 operations; kustomize requires a target for them
        if target is None:
            raise KustomizeError(f"{directory}: a JSON 6902 patch needs a target")
        for resource in resources:
            if _matches(resource, target):
                _json6902(resource, body)
        return
    if target is None:
        target = {"kind": body["kind"], "name": body["metadata"]["name"]}
        found = [r for r in resources if _matches(r, target)]
        if not found:
            raise KustomizeError(f"{directory}: patch target {target} not found")
    for resource in resources:
        if _matches(resource, target):
            merged = strategic_merge(resource, body, builtin=group_of(resource) in BUILTIN_GROUPS)
            resource.clear()
            resource.update(merged)


def _merge_key(field: str, items: list[Any]) -> str | None:
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    if field == "volumeMounts":
        return "mountPath"
    if all("name" in item for item in items):
        return "name"
    return None


def strategic_merge(base: Any, patch: Any, *, builtin: bool, field: str = "") -> Any:
    """Merge ``patch`` into ``base``: maps recursively, keyed lists by key (builtin kinds only)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, builtin=builtin, field=key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if builtin and isinstance(base, list) and isinstance(patch, list):
        key = _merge_key(field, base + patch)
        if key is not None:
            out_list = copy.deepcopy(base)
            for item in patch:
                for i, existing in enumerate(out_list):
                    if existing[key] == item[key]:
                        out_list[i] = strategic_merge(existing, item, builtin=builtin, field=field)
                        break
                else:
                    out_list.append(copy.deepcopy(item))
            return out_list
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _json6902(resource: Resource, operations: list[dict[str, Any]]) -> None:
    for op in operations:
        *parents, last = _pointer(op["path"])
        node: Any = resource
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        kind = op["op"]
        if kind not in ("add", "replace", "remove"):
            raise KustomizeError(f"unsupported JSON 6902 op {kind!r}")
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "remove":
                del node[index]
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            else:
                node.insert(index, copy.deepcopy(op["value"]))
        else:
            if kind != "add" and last not in node:
                raise KustomizeError(f"JSON 6902 {kind}: {op['path']} does not exist")
            if kind == "remove":
                del node[last]
            else:
                node[last] = copy.deepcopy(op["value"])


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    """The pod spec of a workload resource, or None for other kinds."""
    if resource.get("kind") in WORKLOAD_KINDS:
        return resource["spec"]["template"]["spec"]
    return None


def _set_image(resources: list[Resource], image: dict[str, str]) -> None:
    for resource in resources:
        spec = pod_spec(resource)
        if spec is None:
            continue
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            current = container["image"]
            name, _, tag = current.partition(":")
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            tag = image.get("newTag", tag)
            container["image"] = f"{name}:{tag}" if tag else name


def _set_replicas(resources: list[Resource], replica: dict[str, Any]) -> None:
    found = False
    for resource in resources:
        if resource.get("kind") in WORKLOAD_KINDS and resource["metadata"]["name"] == replica["name"]:
            resource["spec"]["replicas"] = int(replica["count"])
            found = True
    if not found:
        raise KustomizeError(f"replicas: no workload named {replica['name']!r}")
