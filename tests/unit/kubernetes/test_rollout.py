"""`rollout --target kubernetes --dry-run`: what a rollout changes, said from the manifests."""

from __future__ import annotations

from tests.unit.kubernetes.variants import MODELS_DIGEST, demo, scaled
from tfstack.kubernetes import plan_kubernetes_rollout

NEW_MODELS = "registry.example.internal/tfstack/demo-models@sha256:" + "1d" * 32


def test_new_model_image_makes_a_new_replica_set() -> None:
    """A new model image changes the pod template only: new ReplicaSet, maxUnavailable 0."""
    variant = demo()
    plan = plan_kubernetes_rollout(
        variant.spec, variant.target, variant.spec_path, variant.root, model_image=NEW_MODELS
    )
    assert plan.new_replica_set
    assert list(plan.diffs) == ["deploy/kubernetes/deployment.yaml"]
    (effect,) = plan.effects
    assert MODELS_DIGEST in effect and NEW_MODELS in effect
    assert "maxUnavailable 0" in effect and "readiness probe" in effect
    assert "kubectl rollout undo deployment/tfstack-demo" in effect
    text = plan.text()
    assert f"+        image: {NEW_MODELS}" in text
    assert "dry run" in text


def test_models_config_change_is_a_hot_reload_not_new_pods() -> None:
    """Only the ConfigMap changes; the plan says how running pods pick it up."""
    variant = scaled()
    models = [model.model_copy(update={"labels": {"stable": 2}}) for model in variant.spec.models]
    changed = variant.spec.model_copy(update={"models": models})
    plan = plan_kubernetes_rollout(
        variant.spec, variant.target, variant.spec_path, variant.root, new_spec=changed
    )
    assert not plan.new_replica_set
    (effect,) = plan.effects
    assert effect.startswith("ConfigMap scoring-config: models.config changes in place")
    assert "every 30 s" in effect


def test_without_polling_the_plan_sends_reloads_to_every_pod() -> None:
    """With config_poll_seconds 0 the reload goes to each pod of the headless Service."""
    variant = demo()
    models = [model.model_copy(update={"labels": {}}) for model in variant.spec.models]
    changed = variant.spec.model_copy(update={"models": models})
    plan = plan_kubernetes_rollout(
        variant.spec, variant.target, variant.spec_path, variant.root, new_spec=changed
    )
    assert any("tfstack-demo-pods" in effect for effect in plan.effects)


def test_batching_change_rolls_the_pods() -> None:
    """Batching is read at start only, so its change makes a new ReplicaSet."""
    variant = scaled()
    batching = variant.spec.batching.model_copy(update={"batch_timeout_micros": 5000})
    changed = variant.spec.model_copy(update={"batching": batching})
    plan = plan_kubernetes_rollout(
        variant.spec, variant.target, variant.spec_path, variant.root, new_spec=changed
    )
    assert plan.new_replica_set
    assert any("start-time configs" in effect for effect in plan.effects)


def test_same_image_changes_nothing() -> None:
    """Rolling out the image already deployed is a no-op plan."""
    variant = demo()
    plan = plan_kubernetes_rollout(
        variant.spec,
        variant.target,
        variant.spec_path,
        variant.root,
        model_image=variant.target.model_image,
    )
    assert plan.effects == ["nothing changes"] and not plan.diffs and not plan.new_replica_set
