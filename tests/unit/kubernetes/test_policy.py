"""Policy checks on the rendered base, in the spirit of kube-score and kube-linter."""

from __future__ import annotations

from typing import Any

from tests.unit.kubernetes.variants import Variant
from tfstack.kubernetes import KubernetesManifests
from tfstack.spec.deploy import parse_image


def _deployment(manifests: KubernetesManifests) -> dict[str, Any]:
    (deployment,) = manifests.find("Deployment")
    return deployment


def _pod(manifests: KubernetesManifests) -> dict[str, Any]:
    pod: dict[str, Any] = _deployment(manifests)["spec"]["template"]["spec"]
    return pod


def _pod_labels(manifests: KubernetesManifests) -> dict[str, str]:
    labels: dict[str, str] = _deployment(manifests)["spec"]["template"]["metadata"]["labels"]
    return labels


def _containers(manifests: KubernetesManifests) -> list[dict[str, Any]]:
    pod = _pod(manifests)
    return [*pod.get("initContainers", []), *pod["containers"]]


def _server(manifests: KubernetesManifests) -> dict[str, Any]:
    server: dict[str, Any]
    (server,) = _pod(manifests)["containers"]
    return server


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def test_probes_exist_and_point_at_real_ports(manifests: KubernetesManifests) -> None:
    """Startup/readiness run the probe against the REST container port; liveness names a port."""
    server = _server(manifests)
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    for kind in ("startupProbe", "readinessProbe"):
        command = server[kind]["exec"]["command"]
        assert command[0] == "modelserver-probe", kind
        assert f"--rest-port={ports['rest']}" in command, kind
        assert "--model-config=/config/models.config" in command, kind
    liveness = server["livenessProbe"]
    assert "exec" not in liveness  # a pod still loading a version must not be killed
    assert liveness["tcpSocket"]["port"] in ports


def test_startup_probe_allows_the_configured_load_time(
    variant: Variant, manifests: KubernetesManifests
) -> None:
    """The startup probe gives every model startup_timeout_seconds to load before a restart."""
    startup = _server(manifests)["startupProbe"]
    allowed = startup["periodSeconds"] * startup["failureThreshold"]
    assert allowed >= variant.target.startup_timeout_seconds


def test_every_container_has_requests_and_limits(manifests: KubernetesManifests) -> None:
    """CPU and memory requests and limits are set on every container, init ones included."""
    for container in _containers(manifests):
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, container["name"]


def test_server_resources_come_from_the_spec(
    variant: Variant, manifests: KubernetesManifests
) -> None:
    """serving.resources (Compose units) become the server's requests and limits."""
    resources = _server(manifests)["resources"]
    expected = {
        "demo": {"cpu": "2", "memory": "2Gi"},
        "scaled": {"cpu": "1500m", "memory": "1536Mi"},
    }
    assert resources["limits"] == resources["requests"] == expected[variant.name]


def test_pods_are_locked_down(manifests: KubernetesManifests) -> None:
    """Non-root, seccomp RuntimeDefault, read-only root, no escalation, no caps, no token."""
    pod = _pod(manifests)
    assert pod["automountServiceAccountToken"] is False
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in _containers(manifests):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]


def test_pdb_selects_the_deployment_pods(manifests: KubernetesManifests) -> None:
    """The PodDisruptionBudget covers exactly the server pods and never blocks every eviction."""
    (budget,) = manifests.find("PodDisruptionBudget")
    assert _selects(budget["spec"]["selector"]["matchLabels"], _pod_labels(manifests))
    assert budget["spec"]["maxUnavailable"] == 1


def test_deployment_selector_matches_its_pod_template(manifests: KubernetesManifests) -> None:
    """The Deployment's selector matches the labels of the pods it creates."""
    selector = _deployment(manifests)["spec"]["selector"]["matchLabels"]
    assert _selects(selector, _pod_labels(manifests))


def test_services_select_the_pods_and_target_named_container_ports(
    manifests: KubernetesManifests,
) -> None:
    """Both Services select the server pods; REST and gRPC target container ports that exist."""
    container_ports = {port["name"] for port in _server(manifests)["ports"]}
    services = manifests.find("Service")
    assert len(services) == 2
    for service in services:
        assert _selects(service["spec"]["selector"], _pod_labels(manifests))
        protocols = {port["name"]: port["appProtocol"] for port in service["spec"]["ports"]}
        assert protocols == {"grpc": "kubernetes.io/h2c", "rest": "http"}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= container_ports


def test_reload_service_lists_every_pod(manifests: KubernetesManifests) -> None:
    """The headless Service used for config reloads lists pods whether ready or not."""
    (headless,) = [s for s in manifests.find("Service") if s["spec"].get("clusterIP") == "None"]
    assert headless["spec"]["publishNotReadyAddresses"] is True


def test_network_policy_admits_only_the_declared_ports(
    variant: Variant, manifests: KubernetesManifests
) -> None:
    """The NetworkPolicy selects the pods and opens gRPC and REST, nothing else."""
    (policy,) = manifests.find("NetworkPolicy")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], _pod_labels(manifests))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    serving = variant.spec.serving
    assert sorted(port["port"] for port in rule["ports"]) == sorted(
        [serving.grpc_port, serving.rest_port]
    )


def test_hpa_targets_the_deployment_which_leaves_replicas_to_it(
    variant: Variant, manifests: KubernetesManifests
) -> None:
    """The HPA scales the Deployment on CPU; the Deployment sets no replica count to fight it."""
    (autoscaler,) = manifests.find("HorizontalPodAutoscaler")
    deployment = _deployment(manifests)
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert autoscaler["spec"]["minReplicas"] >= variant.spec.serving.replicas
    assert autoscaler["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in deployment["spec"]


def test_config_is_a_directory_mount_of_the_configmap(manifests: KubernetesManifests) -> None:
    """The ConfigMap is mounted as a directory at /config (no subPath, which never updates)."""
    pod = _pod(manifests)
    (config_map,) = manifests.find("ConfigMap")
    config_volumes = {v["name"] for v in pod["volumes"] if "configMap" in v}
    assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} == {
        config_map["metadata"]["name"]
    }
    for container in _containers(manifests):
        for mount in container.get("volumeMounts", []):
            if mount["name"] in config_volumes:
                assert "subPath" not in mount and "subPathExpr" not in mount
                assert mount["mountPath"] == "/config"
    assert "--model_config_file=/config/models.config" in _server(manifests)["args"]


def test_no_image_is_latest_or_untagged(manifests: KubernetesManifests) -> None:
    """Every image is pinned by digest or a release tag, never :latest."""
    for container in _containers(manifests):
        parsed = parse_image(container["image"])
        assert parsed is not None and parsed.pinned, container["image"]


def test_rolling_update_never_removes_a_ready_pod_first(manifests: KubernetesManifests) -> None:
    """Rollouts surge one pod and remove none until it is ready (maxUnavailable 0)."""
    strategy = _deployment(manifests)["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_shutdown_covers_prestop_and_drain(
    variant: Variant, manifests: KubernetesManifests
) -> None:
    """The grace period outlasts the preStop sleep plus the server's drain."""
    pod = _pod(manifests)
    sleep = _server(manifests)["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == ["sleep", str(variant.target.pre_stop_seconds)]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > variant.target.pre_stop_seconds + variant.target.drain_seconds


def test_labels_in_startup_config_are_allowed(manifests: KubernetesManifests) -> None:
    """Specs with version labels get --allow_version_labels_for_unavailable_models=true."""
    assert "--allow_version_labels_for_unavailable_models=true" in _server(manifests)["args"]


def test_pods_spread_over_nodes(manifests: KubernetesManifests) -> None:
    """A topology spread constraint over hostnames selects the server pods."""
    (spread,) = _pod(manifests)["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert _selects(spread["labelSelector"]["matchLabels"], _pod_labels(manifests))


def test_model_source_matches_the_target(variant: Variant, manifests: KubernetesManifests) -> None:
    """A model image is copied into an emptyDir by an initContainer; a claim mounts read-only."""
    pod = _pod(manifests)
    (models,) = [v for v in pod["volumes"] if v["name"] == "models"]
    if variant.target.model_image is not None:
        (init,) = pod["initContainers"]
        assert init["image"] == variant.target.model_image
        assert "emptyDir" in models
    else:
        assert "initContainers" not in pod
        assert models["persistentVolumeClaim"] == {
            "claimName": variant.target.model_claim,
            "readOnly": True,
        }
