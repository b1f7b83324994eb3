"""Checks on rendered Kubernetes manifests: schemas, and that names, labels and ports line up.

Each check takes the rendered resources and yields one message per problem, so a test asserts
that the list is empty and a failure names every broken reference at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate

from jobyard.keys import PRIORITY_LEVELS, Keys
from jobyard.settings import Settings
from tests.deploy import crd_schemas
from tests.deploy.kustomize_lite import Resource, pod_spec

KUBERNETES_VERSION = "1.30"
JOBYARD_IMAGE = "jobyard"
ROLES = ("api", "worker", "scheduler")
# A worker's SIGTERM drain: stopping_wait_time (5 s default, jobs may set more) plus margin.
MIN_WORKER_GRACE_SECONDS = 60


def known_env_names() -> set[str]:
    """Every JOBYARD_* variable that jobyard's Settings reads."""
    return {"JOBYARD_" + name.upper() for name in Settings.model_fields}


def name_of(resource: Resource) -> str:
    """metadata.name of a resource."""
    return str(resource["metadata"]["name"])


def by_kind(resources: list[Resource], kind: str) -> list[Resource]:
    """The resources of one kind, in order."""
    return [r for r in resources if r.get("kind") == kind]


def find(resources: list[Resource], kind: str, name: str) -> Resource | None:
    """The resource of that kind and name, if any."""
    return next((r for r in by_kind(resources, kind) if name_of(r) == name), None)


def workloads(resources: list[Resource]) -> list[Resource]:
    """Deployments and StatefulSets."""
    return [r for r in resources if pod_spec(r) is not None]


def is_jobyard(container: dict[str, Any]) -> bool:
    """A container running the jobyard image (whatever registry and tag the overlay sets)."""
    repository = str(container.get("image", "")).split("@")[0].rsplit(":", 1)[0]
    return repository.rsplit("/", 1)[-1] == JOBYARD_IMAGE


def containers(resource: Resource) -> list[dict[str, Any]]:
    """The containers (and init containers) of a workload."""
    spec = pod_spec(resource) or {}
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def pod_labels(resource: Resource) -> dict[str, str]:
    """The labels of a workload's pods."""
    return dict(resource["spec"]["template"]["metadata"].get("labels", {}))


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A matchLabels selector (or a Service's plain selector) against a label set."""
    if "matchExpressions" in selector:
        raise AssertionError("matchExpressions are not used in deploy/k8s; extend the check")
    wanted = selector.get("matchLabels", selector)
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def matching_workloads(resources: list[Resource], selector: dict[str, Any], namespace: Any) -> list[Resource]:
    """Workloads in ``namespace`` whose pods the selector picks."""
    return [
        w
        for w in workloads(resources)
        if w["metadata"].get("namespace") == namespace and selector_matches(selector, pod_labels(w))
    ]


def container_ports(resource: Resource) -> dict[str | int, dict[str, Any]]:
    """Declared container ports of a workload, by name and by number."""
    out: dict[str | int, dict[str, Any]] = {}
    for container in containers(resource):
        for port in container.get("ports", []):
            out[int(port["containerPort"])] = port
            if "name" in port:
                out[port["name"]] = port
    return out


# ---- schemas -------------------------------------------------------------------------------


def check_schemas(resources: list[Resource]) -> Iterator[str]:
    """Built-in kinds against Kubernetes' own schema (strict); KEDA and Prometheus Operator kinds
    against the published CRD shapes of the fields used here."""
    for resource in resources:
        label = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
        schema = crd_schemas.SCHEMAS.get((resource.get("apiVersion"), resource.get("kind")))
        if schema is not None:
            validator = jsonschema.Draft202012Validator(schema)
            for error in validator.iter_errors(resource):
                yield f"{label}: {error.json_path}: {error.message}"
            yield from crd_schemas.check_embedded(resource, KUBERNETES_VERSION)
            continue
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            yield f"{label}: {error.json_path}: {error.message}"
        except kubernetes_validate.SchemaNotFoundError:
            yield f"{label}: no Kubernetes {KUBERNETES_VERSION} schema and no CRD check for it"


# ---- references ----------------------------------------------------------------------------


def check_services(resources: list[Resource]) -> Iterator[str]:
    """Every Service selects pods, and its target ports are ports those pods declare."""
    for service in by_kind(resources, "Service"):
        selector = service["spec"].get("selector", {})
        targets = matching_workloads(resources, selector, service["metadata"].get("namespace"))
        if not targets:
            yield f"Service/{name_of(service)}: selector {selector} matches no pods"
            continue
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for workload in targets:
                if target not in container_ports(workload):
                    yield f"Service/{name_of(service)}: targetPort {target!r} not in {name_of(workload)}"


def check_pdbs(resources: list[Resource]) -> Iterator[str]:
    """Every PodDisruptionBudget covers exactly one workload and can be satisfied."""
    for pdb in by_kind(resources, "PodDisruptionBudget"):
        targets = matching_workloads(resources, pdb["spec"]["selector"], pdb["metadata"].get("namespace"))
        if len(targets) != 1:
            yield f"PodDisruptionBudget/{name_of(pdb)}: selects {len(targets)} workloads, expected 1"
            continue
        replicas = targets[0]["spec"].get("replicas", 1)
        min_available = pdb["spec"].get("minAvailable")
        if isinstance(min_available, int) and min_available >= replicas:
            yield f"PodDisruptionBudget/{name_of(pdb)}: minAvailable {min_available} blocks every drain"


def check_probes(resources: list[Resource]) -> Iterator[str]:
    """Probes use declared ports; jobyard roles probe /healthz (liveness) and /readyz (readiness)."""
    for workload in workloads(resources):
        ports = container_ports(workload)
        for container in containers(workload):
            where = f"{name_of(workload)}/{container['name']}"
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = container.get(kind)
                if probe is None:
                    if is_jobyard(container) and kind != "startupProbe":
                        yield f"{where}: no {kind}"
                    continue
                action = probe.get("httpGet") or probe.get("tcpSocket")
                if action is not None and action["port"] not in ports:
                    yield f"{where}: {kind} port {action['port']!r} is not a declared container port"
                if is_jobyard(container):
                    path = (probe.get("httpGet") or {}).get("path")
                    wanted = "/readyz" if kind == "readinessProbe" else "/healthz"
                    if path != wanted:
                        yield f"{where}: {kind} probes {path!r}, expected {wanted}"


def check_security(resources: list[Resource]) -> Iterator[str]:
    """Non-root, read-only root, no capabilities, RuntimeDefault seccomp, resources set."""
    for workload in workloads(resources):
        spec = pod_spec(workload) or {}
        pod_sc = spec.get("securityContext", {})
        if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            yield f"{name_of(workload)}: pod seccompProfile is not RuntimeDefault"
        if spec.get("automountServiceAccountToken") is not False:
            yield f"{name_of(workload)}: mounts a service account token it does not need"
        mounts_ok = {v["name"] for v in spec.get("volumes", [])} | {
            t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])
        }
        for container in containers(workload):
            where = f"{name_of(workload)}/{container['name']}"
            sc = container.get("securityContext", {})
            if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
                yield f"{where}: runAsNonRoot is not true"
            if sc.get("readOnlyRootFilesystem") is not True:
                yield f"{where}: readOnlyRootFilesystem is not true"
            if sc.get("allowPrivilegeEscalation") is not False:
                yield f"{where}: allowPrivilegeEscalation is not false"
            if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
                yield f"{where}: capabilities do not drop ALL"
            resources_ = container.get("resources", {})
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources_.get(part, {})):
                    yield f"{where}: resources.{part} must set cpu and memory"
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in mounts_ok:
                    yield f"{where}: volumeMount {mount['name']!r} has no volume"
            if is_jobyard(container):
                paths = {m["mountPath"] for m in container.get("volumeMounts", [])}
                for needed in ("/tmp", "/var/lib/jobyard/data"):
                    if needed not in paths:
                        yield f"{where}: {needed} is not a writable volume (the root filesystem is read-only)"


def env_of(resources: list[Resource], container: dict[str, Any], namespace: Any) -> Iterator[tuple[str, str]]:
    """(variable name, where it comes from) for a container's env and envFrom."""
    for item in container.get("env", []):
        yield item["name"], "env"
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef") or {}
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        obj = find(resources, kind, ref.get("name", ""))
        if obj is None or obj["metadata"].get("namespace") != namespace:
            yield f"<missing {kind} {ref.get('name')}>", "envFrom"
            continue
        for key in obj.get("data", {}) | obj.get("stringData", {}):
            yield key, f"{kind}/{ref['name']}"


def check_env(resources: list[Resource], *, secrets_resolved: bool = True) -> Iterator[str]:
    """jobyard containers set only JOBYARD_* names that Settings reads; every reference resolves."""
    known = known_env_names()
    for workload in workloads(resources):
        namespace = workload["metadata"].get("namespace")
        for container in containers(workload):
            where = f"{name_of(workload)}/{container['name']}"
            if is_jobyard(container):
                for name, source in env_of(resources, container, namespace):
                    if name not in known:
                        yield f"{where}: {name} (from {source}) is not a jobyard setting"
            for item in container.get("env", []):
                ref = (item.get("valueFrom") or {}).get("secretKeyRef") or (item.get("valueFrom") or {}).get(
                    "configMapKeyRef"
                )
                if ref is None or not secrets_resolved:
                    continue
                kind = "Secret" if "secretKeyRef" in item["valueFrom"] else "ConfigMap"
                obj = find(resources, kind, ref["name"])
                if obj is None:
                    yield f"{where}: {item['name']} refers to missing {kind} {ref['name']}"
                elif ref["key"] not in obj.get("data", {}) and not ref.get("optional"):
                    yield f"{where}: {item['name']} refers to missing {kind} key {ref['name']}/{ref['key']}"
            if is_jobyard(container) and container["name"] == "worker":
                instance = next(
                    (e for e in container.get("env", []) if e["name"] == "JOBYARD_INSTANCE_ID"), {}
                )
                field = ((instance.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
                if field != "metadata.name":
                    yield f"{where}: JOBYARD_INSTANCE_ID must come from the pod name (downward API)"


def check_roles(resources: list[Resource]) -> Iterator[str]:
    """One Deployment per role, its command parses, the worker's grace period covers a drain."""
    from jobyard.cli import cli

    for role in ROLES:
        deployment = find(resources, "Deployment", f"jobyard-{role}")
        if deployment is None:
            yield f"no Deployment jobyard-{role}"
            continue
        (container,) = [c for c in containers(deployment) if is_jobyard(c)]
        args = list(container.get("args", []))
        if not args or args[0] != role:
            yield f"jobyard-{role}: args {args} do not start the {role} role"
            continue
        command = cli.commands[role]
        try:
            command.make_context(role, args[1:])
        except Exception as exc:
            yield f"jobyard-{role}: `jobyard {' '.join(args)}` does not parse: {exc}"
        grace = (pod_spec(deployment) or {}).get("terminationGracePeriodSeconds", 30)
        floor = MIN_WORKER_GRACE_SECONDS if role == "worker" else 30
        if grace < floor:
            yield f"jobyard-{role}: terminationGracePeriodSeconds {grace} < {floor}"


def queue_lists(prefix: str = "jobyard") -> set[str]:
    """The Redis lists that hold waiting runs, one per priority level."""
    keys = Keys(prefix)
    return {keys.queue(level) for level in PRIORITY_LEVELS}


def check_keda(resources: list[Resource], *, prefix: str = "jobyard") -> Iterator[str]:
    """The ScaledObject scales the worker Deployment on all three priority lists."""
    for scaled in by_kind(resources, "ScaledObject"):
        spec = scaled["spec"]
        target = spec["scaleTargetRef"]
        if (
            target.get("kind", "Deployment") != "Deployment"
            or find(resources, "Deployment", target["name"]) is None
        ):
            yield f"ScaledObject/{name_of(scaled)}: scaleTargetRef {target} is not a Deployment here"
        elif target["name"] != "jobyard-worker":
            yield f"ScaledObject/{name_of(scaled)}: scales {target['name']}, not the workers"
        triggers = spec["triggers"]
        lists = [t["metadata"].get("listName") for t in triggers]
        if sorted(lists) != sorted(queue_lists(prefix)):
            yield f"ScaledObject/{name_of(scaled)}: lists {lists} != the queues {sorted(queue_lists(prefix))}"
        for trigger in triggers:
            if trigger["type"] not in ("redis", "redis-sentinel"):
                yield f"ScaledObject/{name_of(scaled)}: trigger type {trigger['type']}"
            if not str(trigger["metadata"].get("listLength", "")).isdigit():
                yield f"ScaledObject/{name_of(scaled)}: listLength must be a positive integer string"
            auth = (trigger.get("authenticationRef") or {}).get("name")
            if auth is not None and find(resources, "TriggerAuthentication", auth) is None:
                yield f"ScaledObject/{name_of(scaled)}: TriggerAuthentication {auth} missing"
        formula = (spec.get("advanced", {}).get("scalingModifiers") or {}).get("formula")
        if formula is not None:
            names = {t.get("name") for t in triggers}
            used = {word for word in formula.replace("+", " ").split()}
            if used != names:
                yield f"ScaledObject/{name_of(scaled)}: formula {formula!r} uses {used}, triggers are {names}"
    for auth in by_kind(resources, "TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            secret = find(resources, "Secret", ref["name"])
            if secret is None or ref["key"] not in secret.get("data", {}):
                yield f"TriggerAuthentication/{name_of(auth)}: Secret {ref['name']} key {ref['key']} missing"


def check_service_monitors(resources: list[Resource]) -> Iterator[str]:
    """ServiceMonitors select the jobyard Services and scrape ports those Services name."""
    services = by_kind(resources, "Service")
    for monitor in by_kind(resources, "ServiceMonitor"):
        selected = [
            s for s in services if selector_matches(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        roles = {s["metadata"]["labels"].get("app.kubernetes.io/component") for s in selected}
        if roles != set(ROLES):
            yield f"ServiceMonitor/{name_of(monitor)}: selects roles {roles}, expected {set(ROLES)}"
        port_names = {p.get("name") for s in selected for p in s["spec"]["ports"]}
        for service in selected:
            names = {p.get("name") for p in service["spec"]["ports"]}
            if not names & {e["port"] for e in monitor["spec"]["endpoints"]}:
                yield f"ServiceMonitor/{name_of(monitor)}: no endpoint scrapes Service {name_of(service)}"
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint["port"] not in port_names:
                yield f"ServiceMonitor/{name_of(monitor)}: port {endpoint['port']} is on no selected Service"


def check_scrape_annotations(resources: list[Resource]) -> Iterator[str]:
    """Plain Prometheus finds every role through prometheus.io/* pod annotations."""
    for workload in workloads(resources):
        if not any(is_jobyard(c) for c in containers(workload)):
            continue
        notes = workload["spec"]["template"]["metadata"].get("annotations", {})
        port = notes.get("prometheus.io/port")
        if notes.get("prometheus.io/scrape") != "true" or port is None:
            yield f"{name_of(workload)}: prometheus.io/scrape and prometheus.io/port annotations missing"
        elif int(port) not in container_ports(workload):
            yield f"{name_of(workload)}: prometheus.io/port {port} is not a container port"


def check_network_policies(resources: list[Resource]) -> Iterator[str]:
    """NetworkPolicies protect existing pods and let jobyard's pods in."""
    for policy in by_kind(resources, "NetworkPolicy"):
        namespace = policy["metadata"].get("namespace")
        if not matching_workloads(resources, policy["spec"]["podSelector"], namespace):
            yield f"NetworkPolicy/{name_of(policy)}: podSelector matches no pods"
        peers = [
            p["podSelector"]
            for rule in policy["spec"].get("ingress", [])
            for p in rule["from"]
            if "podSelector" in p
        ]
        for role in ROLES:
            deployment = find(resources, "Deployment", f"jobyard-{role}")
            if deployment is not None and not any(selector_matches(p, pod_labels(deployment)) for p in peers):
                yield f"NetworkPolicy/{name_of(policy)}: jobyard-{role} may not connect"


def check_redis_wiring(resources: list[Resource]) -> Iterator[str]:
    """The Redis URL, KEDA's address and the sentinel lists agree with each other."""
    config = find(resources, "ConfigMap", "jobyard-config")
    data = config.get("data", {}) if config else {}
    sentinels = data.get("JOBYARD_REDIS_SENTINELS", "")
    for scaled in by_kind(resources, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            meta = trigger["metadata"]
            if trigger["type"] == "redis-sentinel":
                if meta.get("addresses") != sentinels:
                    yield f"trigger {trigger.get('name')}: addresses != JOBYARD_REDIS_SENTINELS {sentinels!r}"
                if meta.get("sentinelMaster") != data.get("JOBYARD_REDIS_MASTER_NAME"):
                    yield f"trigger {trigger.get('name')}: sentinelMaster != JOBYARD_REDIS_MASTER_NAME"
            elif sentinels:
                yield f"trigger {trigger.get('name')}: type redis while jobyard uses Sentinel"
    secret = next((s for s in by_kind(resources, "Secret") if "JOBYARD_REDIS_URL" in s.get("data", {})), None)
    if secret is None or sentinels:
        return
    url = urlsplit(secret["data"]["JOBYARD_REDIS_URL"])
    address = f"{url.hostname}:{url.port or 6379}"
    if secret["data"].get("REDIS_ADDRESS") not in (None, address):
        yield f"REDIS_ADDRESS {secret['data']['REDIS_ADDRESS']!r} != the URL's {address!r}"
    if "REDIS_PASSWORD" in secret["data"] and (url.password or "") != secret["data"]["REDIS_PASSWORD"]:
        yield "the password in JOBYARD_REDIS_URL differs from REDIS_PASSWORD"
    service = find(resources, "Service", str(url.hostname))
    if service is not None and url.port not in (None, *[p["port"] for p in service["spec"]["ports"]]):
        yield f"JOBYARD_REDIS_URL port {url.port} is not a port of Service {url.hostname}"


ALL_CHECKS = (
    check_services,
    check_pdbs,
    check_probes,
    check_security,
    check_roles,
    check_keda,
    check_service_monitors,
    check_scrape_annotations,
    check_network_policies,
    check_redis_wiring,
)
