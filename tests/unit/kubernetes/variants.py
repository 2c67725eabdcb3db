"""The specs the Kubernetes tests render: the demo stack and a replicas/batching/TLS variant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.unit.specfixtures import valid_spec
from tfstack.kubernetes import KubernetesManifests, KubernetesTarget, plan_kubernetes
from tfstack.spec import StackSpec, load_spec

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden" / "kubernetes"
SERVING_DIGEST = "sha256:" + "4f" * 32
MODELS_DIGEST = "sha256:" + "9c" * 32
SERVING_IMAGE = f"registry.example.internal/tfstack/serving-runtime@{SERVING_DIGEST}"
MODEL_IMAGE = f"registry.example.internal/tfstack/demo-models@{MODELS_DIGEST}"


@dataclass(frozen=True)
class Variant:
    name: str
    spec: StackSpec
    target: KubernetesTarget
    spec_path: Path
    root: Path

    def render(self) -> KubernetesManifests:
        return plan_kubernetes(self.spec, self.target, self.spec_path, self.root)


def demo() -> Variant:
    """config/stack.yaml with a pinned server image and the demo models as a model image."""
    spec_path = ROOT / "config" / "stack.yaml"
    spec = load_spec(spec_path, check_disk=False)
    target = KubernetesTarget(serving_image=SERVING_IMAGE, model_image=MODEL_IMAGE)
    return Variant("demo", spec, target, spec_path, ROOT)


def scaled_data() -> dict[str, Any]:
    """specfixtures' valid spec grown to 3 replicas with resources (batching is already on)."""
    data = valid_spec()
    data["serving"] |= {
        "image": "registry.example.internal/tfstack/serving-runtime:2.1.0",
        "replicas": 3,
        "resources": {"cpus": 1.5, "memory": "1536m"},
        "config_poll_seconds": 30,
    }
    return data


def scaled() -> Variant:
    """Replicas, batching, models on a PVC, autoscaling bounds and an Ingress ending TLS."""
    root = Path("/srv/tfstack-scaled")  # never touched: only names the spec in headers
    spec = StackSpec.model_validate(scaled_data())
    target = KubernetesTarget.model_validate(
        {
            "namespace": "inference",
            "name": "scoring",
            "model_claim": "models-ro",
            "autoscaling": {"min_replicas": 3, "max_replicas": 8, "cpu_utilization": 60},
            "ingress": {
                "host": "models.example.internal",
                "class_name": "nginx",
                "tls_secret": "models-tls",
            },
            "drain_seconds": 25,
        }
    )
    return Variant("scaled", spec, target, root / "config" / "stack.yaml", root)


VARIANTS = {"demo": demo, "scaled": scaled}
