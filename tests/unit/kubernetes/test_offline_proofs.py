"""The rendered base is what clusters and TF Serving accept: strict OpenAPI schemas of several
Kubernetes minor versions, ``kubectl kustomize``, and TF Serving's own protos for the configs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tests.unit.kubernetes.variants import Variant
from tfstack.core import textproto
from tfstack.kubernetes import (
    KUBERNETES_DIR,
    KubernetesManifests,
    kustomize_build,
    write_kubernetes,
)
from tfstack.render import MODELS_CONFIG, render_stack

KUBERNETES_VERSIONS = ("1.29.0", "1.31.0", "1.33.0")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_objects_validate_strictly_against_openapi_schemas(
    manifests: KubernetesManifests, version: str
) -> None:
    """Every object is valid for the Kubernetes version, with no unknown field anywhere."""
    documents = list(manifests.documents())
    assert len(documents) >= 7
    for path, document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path} ({version}): {exc.message} at {list(exc.absolute_path)}")


def test_kubectl_kustomize_builds_the_base(manifests: KubernetesManifests, kubectl: str) -> None:
    """`kubectl kustomize deploy/kubernetes` builds every object into the target namespace."""
    kustomization = yaml.safe_load(manifests.files[f"{KUBERNETES_DIR}/kustomization.yaml"])
    with tempfile.TemporaryDirectory() as tmp:
        write_kubernetes(manifests, Path(tmp))
        built = [
            doc
            for doc in yaml.safe_load_all(kustomize_build(Path(tmp) / KUBERNETES_DIR, kubectl))
            if doc
        ]
    expected = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in manifests.documents())
    assert sorted((doc["kind"], doc["metadata"]["name"]) for doc in built) == expected
    assert {doc["metadata"]["namespace"] for doc in built} == {kustomization["namespace"]}


def test_configmap_models_config_parses_with_tf_serving_proto(
    variant: Variant, manifests: KubernetesManifests
) -> None:
    """The ConfigMap's models.config parses as ModelServerConfig and equals the Compose one."""
    (config_map,) = manifests.find("ConfigMap")
    text = config_map["data"]["models.config"]
    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    names = [config.name for config in parsed.model_config_list.config]
    assert names == [model.name for model in variant.spec.models]
    single = variant.spec.model_copy(
        update={"serving": variant.spec.serving.model_copy(update={"replicas": 1})}
    )
    assert text == render_stack(single, variant.spec_path, variant.root)[MODELS_CONFIG]


def test_configmap_start_configs_parse(variant: Variant, manifests: KubernetesManifests) -> None:
    """Batching and monitoring configs are present exactly when enabled and parse as protos."""
    (config_map,) = manifests.find("ConfigMap")
    data = config_map["data"]
    assert ("batching.config" in data) == variant.spec.batching.enabled
    assert ("monitoring.config" in data) == variant.spec.monitoring.enabled
    if "batching.config" in data:
        textproto.parse(data["batching.config"], textproto.batching_parameters())
    if "monitoring.config" in data:
        textproto.parse(data["monitoring.config"], textproto.monitoring_config())
