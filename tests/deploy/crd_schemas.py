"""JSON schemas for the custom resources in deploy/k8s, the fields used there, as published.

kubernetes-validate knows built-in kinds only. These follow the CRDs that KEDA
(``keda.sh_scaledobjects.yaml``, ``keda.sh_triggerauthentications.yaml``, v2.12+) and the
Prometheus Operator (``monitoring.coreos.com_servicemonitors.yaml``) publish: the same required
fields and types, closed (``additionalProperties: false``) over the fields known here, so a typo
fails. A field that is valid upstream but new to this repository needs adding here first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kubernetes_validate

STRING = {"type": "string"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
STRING_MAP = {"type": "object", "additionalProperties": STRING}
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}

METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": STRING, "namespace": STRING, "labels": STRING_MAP, "annotations": STRING_MAP},
    "additionalProperties": False,
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": STRING,
                    "operator": STRING,
                    "values": {"type": "array", "items": STRING},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}

SCALED_OBJECT = _resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "apiVersion": STRING,
                    "kind": STRING,
                    "name": STRING,
                    "envSourceContainerName": STRING,
                },
                "additionalProperties": False,
            },
            "pollingInterval": INTEGER,
            "cooldownPeriod": INTEGER,
            "initialCooldownPeriod": INTEGER,
            "idleReplicaCount": INTEGER,
            "minReplicaCount": INTEGER,
            "maxReplicaCount": INTEGER,
            "fallback": {
                "type": "object",
                "required": ["failureThreshold", "replicas"],
                "properties": {"failureThreshold": INTEGER, "replicas": INTEGER},
                "additionalProperties": False,
            },
            "advanced": {
                "type": "object",
                "properties": {
                    "restoreToOriginalReplicaCount": BOOLEAN,
                    # The behavior object is Kubernetes' HorizontalPodAutoscalerBehavior: checked
                    # against Kubernetes' schema in check_embedded().
                    "horizontalPodAutoscalerConfig": {
                        "type": "object",
                        "properties": {"name": STRING, "behavior": {"type": "object"}},
                        "additionalProperties": False,
                    },
                    "scalingModifiers": {
                        "type": "object",
                        "properties": {
                            "formula": STRING,
                            "target": STRING,
                            "activationTarget": STRING,
                            "metricType": {"enum": ["AverageValue", "Value"]},
                        },
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["type", "metadata"],
                    "properties": {
                        "type": STRING,
                        "name": STRING,
                        "useCachedMetrics": BOOLEAN,
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        # map[string]string upstream: an unquoted number here is rejected by the API server.
                        "metadata": STRING_MAP,
                        "authenticationRef": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": STRING,
                                "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                            },
                            "additionalProperties": False,
                        },
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)

TRIGGER_AUTHENTICATION = _resource(
    "keda.sh/v1alpha1",
    "TriggerAuthentication",
    {
        "type": "object",
        "properties": {
            "secretTargetRef": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["parameter", "name", "key"],
                    "properties": {"parameter": STRING, "name": STRING, "key": STRING},
                    "additionalProperties": False,
                },
            },
            "env": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["parameter", "name"],
                    "properties": {"parameter": STRING, "name": STRING, "containerName": STRING},
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)

SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": LABEL_SELECTOR,
            "jobLabel": STRING,
            "namespaceSelector": {
                "type": "object",
                "properties": {"any": BOOLEAN, "matchNames": {"type": "array", "items": STRING}},
                "additionalProperties": False,
            },
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "port": STRING,
                        "path": STRING,
                        "scheme": {"enum": ["http", "https"]},
                        "interval": DURATION,
                        "scrapeTimeout": DURATION,
                        "honorLabels": BOOLEAN,
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
}


def check_embedded(resource: dict[str, Any], kubernetes_version: str) -> Iterator[str]:
    """Kubernetes types inside custom resources, checked with Kubernetes' own schema."""
    if resource.get("kind") != "ScaledObject":
        return
    behavior = resource["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is None:
        return
    # KEDA hands this object to the HPA it creates: validate it inside an HPA.
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-check"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "maxReplicas": 1,
            "behavior": behavior,
        },
    }
    try:
        kubernetes_validate.validate(hpa, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        yield f"ScaledObject/{resource['metadata']['name']}: behavior {error.json_path}: {error.message}"
