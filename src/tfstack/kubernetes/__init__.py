"""The Kubernetes target: a Kustomize base rendered from the stack spec, validated offline.

No API server is reached: :func:`plan_kubernetes` renders (pure), :func:`write_kubernetes` writes
``deploy/kubernetes/`` atomically, :func:`check_kubernetes_mapping` lists what in a spec cannot map
(by YAML path, for validate), :func:`plan_kubernetes_rollout` says what a rollout changes. Modules:
``target`` (the ``deploy.kubernetes`` options), ``mapping``, ``manifests``, ``apply``, ``rollout``,
``tools`` (kubectl), ``run`` (the entry points tasks call).
"""

from tfstack.kubernetes.apply import KubernetesWriteReport, stale_manifests, write_kubernetes
from tfstack.kubernetes.manifests import (
    KUBERNETES_DIR,
    KUSTOMIZATION,
    KubernetesManifests,
    plan_kubernetes,
)
from tfstack.kubernetes.rollout import KubernetesRollout, plan_kubernetes_rollout, rollout_changes
from tfstack.kubernetes.run import kubernetes_rollout_plan, render_kubernetes
from tfstack.kubernetes.tools import KubectlMissing, ensure_kubectl, kustomize_build
from tfstack.spec.deploy import (
    Autoscaling,
    Ingress,
    KubernetesTarget,
    parse_kubernetes_target,
)
from tfstack.spec.kubernetes_rules import (
    KubernetesProblem,
    check_kubernetes_mapping,
    to_spec_problems,
)

__all__ = [
    "KUBERNETES_DIR",
    "KUSTOMIZATION",
    "Autoscaling",
    "Ingress",
    "KubectlMissing",
    "KubernetesManifests",
    "KubernetesProblem",
    "KubernetesRollout",
    "KubernetesTarget",
    "KubernetesWriteReport",
    "check_kubernetes_mapping",
    "ensure_kubectl",
    "kubernetes_rollout_plan",
    "kustomize_build",
    "parse_kubernetes_target",
    "plan_kubernetes",
    "plan_kubernetes_rollout",
    "render_kubernetes",
    "rollout_changes",
    "stale_manifests",
    "to_spec_problems",
    "write_kubernetes",
]
