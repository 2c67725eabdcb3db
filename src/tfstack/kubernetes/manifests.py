"""Render a stack spec into a Kustomize base for Kubernetes: ``deploy/kubernetes/``.

Plan, then apply. :func:`plan_kubernetes` is pure: spec and target in, ``{path: YAML text}`` out.
Each object is built here as plain data and dumped with ``yaml.safe_dump`` (quoting by the YAML
library, not by hand; keys in the order written, so the output is byte-stable). The TF Serving text
configs are the ones the Compose target renders (:func:`tfstack.render.render_stack`), so both
targets serve exactly the same models.config, batching and monitoring configs.

Why the objects look as they do (docs/kubernetes.md has the long form):

- Probes: startup and readiness run ``modelserver-probe`` (every declared version and label
  AVAILABLE; TF Serving's status endpoint alone cannot tell LOADING from AVAILABLE). Liveness only
  asks whether the REST port accepts connections: a pod loading a new version stays alive.
- Rolling updates add one pod and remove none until it is ready (``maxUnavailable: 0``).
- Shutdown: a ``preStop`` sleep lets endpoints drop the pod before SIGTERM starts the server's
  drain, and the grace period covers sleep + drain with a margin.
- The configs are a ConfigMap mounted as a directory (a ``subPath`` mount never sees updates), so a
  models.config change reaches pods without a restart; batching and monitoring are read at start
  only, so their digest sits in the pod template and a change rolls the pods.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tfstack.errors import SpecError, SpecProblem
from tfstack.render import (
    BATCHING_CONFIG,
    MODELS_CONFIG,
    MONITORING_CONFIG,
    header,
    render_stack,
    serving_flags,
    start_time_digest,
)
from tfstack.spec import CONTAINER_CONFIG_DIR, CONTAINER_MODEL_ROOT, StackSpec
from tfstack.spec.deploy import KubernetesTarget
from tfstack.spec.kubernetes_rules import (
    autoscaling_bounds,
    check_kubernetes_mapping,
    namespace,
    object_name,
    run_as,
)

KUBERNETES_DIR = "deploy/kubernetes"
KUSTOMIZATION = f"{KUBERNETES_DIR}/kustomization.yaml"
SERVER_CONTAINER = "serving"
MODELS_INIT_CONTAINER = "models"
INIT_MODELS_MOUNT = "/mnt/models"
ANNOTATION_START_CONFIG = "tfstack.org/start-config-digest"
ANNOTATION_SPEC = "tfstack.org/spec"
PROBE_COMMAND = "modelserver-probe"  # the runtime image's console script (runtime/pyproject.toml)

PROBE_PERIOD_SECONDS = 5
PROBE_TIMEOUT_SECONDS = 10  # the probe asks about every model in turn, 2 s per request at most
READINESS_FAILURES = 2
LIVENESS_PERIOD_SECONDS = 10
LIVENESS_FAILURES = 6  # a minute of a closed port, not one slow answer
SHUTDOWN_MARGIN_SECONDS = 5
MIN_READY_SECONDS = 5
REVISION_HISTORY = 5  # old ReplicaSets kept for `kubectl rollout undo`
TMP_SIZE = "64Mi"
CONFIG_FILE_MODE = 0o444


@dataclass(frozen=True)
class KubernetesManifests:
    """Rendered files: path relative to the project root -> YAML text, in the order written."""

    files: Mapping[str, str]

    def documents(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every Kubernetes object (not the kustomization) parsed back, with its file."""
        for path, text in self.files.items():
            if path == KUSTOMIZATION:
                continue
            for document in yaml.safe_load_all(text):
                if document is not None:
                    yield path, document

    def find(self, kind: str) -> list[dict[str, Any]]:
        return [document for _, document in self.documents() if document["kind"] == kind]


# --------------------------------------------------------------------------- quantities


def cpu_quantity(cpus: float) -> str:
    """Compose's ``cpus: 1.5`` as a Kubernetes quantity: ``"1500m"`` (whole cores: ``"2"``)."""
    milli = round(cpus * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([kmgKMG]?)[bB]?$")


def memory_quantity(memory: str) -> str:
    """Compose's binary sizes (``2g``, ``512m``, ``64kb``) as Kubernetes quantities (``2Gi``)."""
    match = _MEMORY.match(memory)
    if match is None:  # the spec's schema allows nothing else
        raise ValueError(f"not a memory size: {memory!r}")
    suffix = {"": "", "k": "Ki", "m": "Mi", "g": "Gi"}[match.group(2).lower()]
    return match.group(1) + suffix


# --------------------------------------------------------------------------- objects


def _labels(spec: StackSpec, name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/part-of": spec.project,
        "app.kubernetes.io/managed-by": "tfstack",
    }


def selector_labels(name: str) -> dict[str, str]:
    """What the Service, PDB, NetworkPolicy and spread constraints select: the server pods."""
    return {"app.kubernetes.io/name": "tfserving", "app.kubernetes.io/instance": name}


def _metadata(spec: StackSpec, name: str, suffix: str = "") -> dict[str, Any]:
    return {"name": name + suffix, "labels": _labels(spec, name, "tfserving")}


def _probe_exec(spec: StackSpec) -> dict[str, Any]:
    return {
        "command": [
            PROBE_COMMAND,
            f"--rest-port={spec.serving.rest_port}",
            f"--model-config={CONTAINER_CONFIG_DIR}/models.config",
        ]
    }


def _resources(spec: StackSpec) -> dict[str, Any]:
    amounts: dict[str, str] = {}
    if spec.serving.resources.cpus is not None:
        amounts["cpu"] = cpu_quantity(spec.serving.resources.cpus)
    if spec.serving.resources.memory is not None:
        amounts["memory"] = memory_quantity(spec.serving.resources.memory)
    # Requests equal to limits: Guaranteed QoS, so a loading model is not the first OOM victim.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def termination_grace_seconds(target: KubernetesTarget) -> int:
    """preStop sleep + the server's drain + a margin: SIGKILL never cuts a drain short."""
    return target.pre_stop_seconds + target.drain_seconds + SHUTDOWN_MARGIN_SECONDS


def _server_container(spec: StackSpec, target: KubernetesTarget) -> dict[str, Any]:
    serving = spec.serving
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": target.serving_image or serving.image,
        "imagePullPolicy": "IfNotPresent",
        "args": serving_flags(spec),
        "ports": [
            {"name": "grpc", "containerPort": serving.grpc_port, "protocol": "TCP"},
            {"name": "rest", "containerPort": serving.rest_port, "protocol": "TCP"},
        ],
        "resources": _resources(spec),
        "securityContext": _container_security(),
        "startupProbe": {
            "exec": _probe_exec(spec),
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": math.ceil(target.startup_timeout_seconds / PROBE_PERIOD_SECONDS),
        },
        "readinessProbe": {
            "exec": _probe_exec(spec),
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": READINESS_FAILURES,
        },
        "livenessProbe": {
            "tcpSocket": {"port": "rest"},
            "periodSeconds": LIVENESS_PERIOD_SECONDS,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": LIVENESS_FAILURES,
        },
        "volumeMounts": [
            {"name": "config", "mountPath": CONTAINER_CONFIG_DIR, "readOnly": True},
            {"name": "models", "mountPath": CONTAINER_MODEL_ROOT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if target.pre_stop_seconds:
        container["lifecycle"] = {
            "preStop": {"exec": {"command": ["sleep", str(target.pre_stop_seconds)]}}
        }
    return container


def _models_init_container(target: KubernetesTarget) -> dict[str, Any]:
    assert target.model_image is not None
    source = target.model_image_path.rstrip("/") or "/"
    return {
        "name": MODELS_INIT_CONTAINER,
        "image": target.model_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["cp", "-R", f"{source}/.", f"{INIT_MODELS_MOUNT}/"],
        "resources": {
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"cpu": "1", "memory": "256Mi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "models", "mountPath": INIT_MODELS_MOUNT}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _models_volume(target: KubernetesTarget) -> dict[str, Any]:
    if target.model_claim is not None:
        return {
            "name": "models",
            "persistentVolumeClaim": {"claimName": target.model_claim, "readOnly": True},
        }
    return {"name": "models", "emptyDir": {"sizeLimit": target.models_size_limit}}


def deployment(
    spec: StackSpec, target: KubernetesTarget, start_digest: str, source: str
) -> dict[str, Any]:
    """The server Deployment (see the module docstring for the choices)."""
    name = object_name(spec, target)
    ids = run_as(spec)
    assert ids is not None  # check_kubernetes_mapping refused anything else
    uid, gid = ids
    pod_labels = _labels(spec, name, "tfserving")
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": gid,
            "fsGroup": gid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": termination_grace_seconds(target),
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                # ScheduleAnyway: a one-node cluster and the surge pod of a rollout still schedule.
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(name)},
                # Spread the pods of one ReplicaSet, not old and new ones together.
                "matchLabelKeys": ["pod-template-hash"],
            }
        ],
    }
    if target.model_image is not None:
        pod["initContainers"] = [_models_init_container(target)]
    pod["containers"] = [_server_container(spec, target)]
    pod["volumes"] = [
        {
            "name": "config",
            "configMap": {"name": f"{name}-config", "defaultMode": CONFIG_FILE_MODE},
        },
        _models_volume(target),
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": TMP_SIZE}},
    ]
    deployment_spec: dict[str, Any] = {}
    if not target.autoscaling.enabled:
        # With an HPA the replica count is its job; a count here would fight it on every apply.
        deployment_spec["replicas"] = spec.serving.replicas
    deployment_spec |= {
        "revisionHistoryLimit": REVISION_HISTORY,
        "minReadySeconds": MIN_READY_SECONDS,
        "progressDeadlineSeconds": target.startup_timeout_seconds + 300,
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "selector": {"matchLabels": selector_labels(name)},
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    ANNOTATION_START_CONFIG: start_digest,
                    "kubectl.kubernetes.io/default-container": SERVER_CONTAINER,
                },
            },
            "spec": pod,
        },
    }
    metadata = _metadata(spec, name)
    metadata["annotations"] = {ANNOTATION_SPEC: source}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": deployment_spec,
    }


def _service_ports(spec: StackSpec) -> list[dict[str, Any]]:
    return [
        {
            "name": "grpc",
            "port": spec.serving.grpc_port,
            "targetPort": "grpc",
            "protocol": "TCP",
            # Cleartext HTTP/2: what Gateway API and meshes read to proxy gRPC correctly.
            "appProtocol": "kubernetes.io/h2c",
        },
        {
            "name": "rest",
            "port": spec.serving.rest_port,
            "targetPort": "rest",
            "protocol": "TCP",
            "appProtocol": "http",
        },
    ]


def service(spec: StackSpec, target: KubernetesTarget) -> dict[str, Any]:
    """The Service clients use: ready pods only, REST and gRPC."""
    name = object_name(spec, target)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": _service_ports(spec),
        },
    }


def pods_service(spec: StackSpec, target: KubernetesTarget) -> dict[str, Any]:
    """A headless Service listing every pod, ready or not: where config reloads are sent.

    ``HandleReloadConfigRequest`` through the ClusterIP Service would reach one pod only.
    """
    name = object_name(spec, target)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, name, "-pods"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(name),
            "ports": _service_ports(spec),
        },
    }


def config_map(
    spec: StackSpec, target: KubernetesTarget, configs: Mapping[str, str]
) -> dict[str, Any]:
    """models.config, batching and monitoring configs, keyed by the file names the flags use."""
    name = object_name(spec, target)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(spec, name, "-config"),
        "data": {path.rsplit("/", 1)[-1]: text for path, text in configs.items()},
    }


def pod_disruption_budget(spec: StackSpec, target: KubernetesTarget) -> dict[str, Any]:
    """At most one server pod evicted at a time; never blocks a drain, even with one replica."""
    name = object_name(spec, target)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec, name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(name)},
            # A pod that never got ready (a model failing to load) must not block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def horizontal_pod_autoscaler(spec: StackSpec, target: KubernetesTarget) -> dict[str, Any]:
    """CPU-based autoscaling; scale-down is slow because a new pod has to load every model."""
    name = object_name(spec, target)
    low, high = autoscaling_bounds(spec, target)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": target.autoscaling.cpu_utilization,
                        },
                    },
                }
            ],
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                }
            },
        },
    }


def network_policy(spec: StackSpec, target: KubernetesTarget) -> dict[str, Any]:
    """Only the gRPC and REST ports of the server pods accept connections."""
    name = object_name(spec, target)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(spec, name),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "ports": [
                        {"protocol": "TCP", "port": spec.serving.grpc_port},
                        {"protocol": "TCP", "port": spec.serving.rest_port},
                    ]
                }
            ],
        },
    }


def ingress(spec: StackSpec, target: KubernetesTarget) -> dict[str, Any]:
    """The REST API behind the cluster's ingress controller, TLS ending there when asked."""
    assert target.ingress is not None
    name = object_name(spec, target)
    settings = target.ingress
    body: dict[str, Any] = {}
    if settings.class_name is not None:
        body["ingressClassName"] = settings.class_name
    if settings.tls_secret is not None:
        body["tls"] = [{"hosts": [settings.host], "secretName": settings.tls_secret}]
    body["rules"] = [
        {
            "host": settings.host,
            "http": {
                "paths": [
                    {
                        "path": "/v1/",
                        "pathType": "Prefix",
                        "backend": {"service": {"name": name, "port": {"name": "rest"}}},
                    }
                ]
            },
        }
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _metadata(spec, name),
        "spec": body,
    }


# --------------------------------------------------------------------------- files


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing multi-line strings (the TF Serving configs) as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(document: Mapping[str, Any], head: str) -> str:
    """One YAML document after the generated-file header; key order kept, no line folding."""
    body = yaml.dump(
        dict(document),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        width=4096,
        allow_unicode=True,
    )
    return f"{head}\n{body}"


def _source(spec_path: Path, root: Path) -> str:
    """The spec's path relative to the project, as errors and the header name it."""
    return Path(os.path.relpath(spec_path.resolve(), root.resolve())).as_posix()


def plan_kubernetes(
    spec: StackSpec, target: KubernetesTarget, spec_path: Path, root: Path
) -> KubernetesManifests:
    """Every file of ``deploy/kubernetes/``; SpecError when the spec cannot map (no writes)."""
    problems = check_kubernetes_mapping(spec, target)
    if problems:
        file = _source(spec_path, root)
        raise SpecError(
            [
                SpecProblem(file=file, yaml_path=p.yaml_path, message=p.message, hint=p.hint)
                for p in problems
            ]
        )
    head = header(spec_path, root)
    # The text configs are the Compose target's, byte for byte. One replica: the Compose host-port
    # range check does not apply to pods, and the configs do not depend on the replica count.
    single = spec.model_copy(update={"serving": spec.serving.model_copy(update={"replicas": 1})})
    rendered = render_stack(single, spec_path, root)
    configs = {
        path: rendered[path]
        for path in (MODELS_CONFIG, BATCHING_CONFIG, MONITORING_CONFIG)
        if path in rendered
    }
    objects: dict[str, dict[str, Any]] = {
        "configmap.yaml": config_map(spec, target, configs),
        "deployment.yaml": deployment(
            spec, target, start_time_digest(configs), _source(spec_path, root)
        ),
        "service.yaml": service(spec, target),
        "service-pods.yaml": pods_service(spec, target),
        "poddisruptionbudget.yaml": pod_disruption_budget(spec, target),
        "networkpolicy.yaml": network_policy(spec, target),
    }
    if target.autoscaling.enabled:
        objects["horizontalpodautoscaler.yaml"] = horizontal_pod_autoscaler(spec, target)
    if target.ingress is not None:
        objects["ingress.yaml"] = ingress(spec, target)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace(spec, target),
        "resources": list(objects),
    }
    files = {f"{KUBERNETES_DIR}/{name}": dump_yaml(obj, head) for name, obj in objects.items()}
    files[KUSTOMIZATION] = dump_yaml(kustomization, head)
    return KubernetesManifests(files=files)
