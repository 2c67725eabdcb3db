"""Which old model images a deploy deletes from the registry and from the nodes' engines (pure
selection, no registry and no engine)."""

from __future__ import annotations

import json

from tfstack.build.modelimage import (
    EngineImage,
    RegistryTag,
    model_image_tag,
    parse_engine_images,
    reference_repository,
    stale_engine_references,
    stale_registry_manifests,
)

REPO = "tfstack/models-demo"
NODE_REPO = f"tfstack-registry:5000/{REPO}"


def _tag(tag: str, minute: int, digest: str | None = None) -> RegistryTag:
    return RegistryTag(tag, digest or f"sha256:{tag}", f"2026-12-03T09:{minute:02d}:00.123456789Z")


def test_registry_keeps_the_current_and_the_newest_other_manifest() -> None:
    tags = [_tag("aaaa", 0), _tag("bbbb", 10), _tag("cccc", 20), _tag("dddd", 30)]
    assert stale_registry_manifests(reversed(tags), current_tag="dddd") == [
        "sha256:aaaa",
        "sha256:bbbb",
    ]


def test_registry_keeps_a_rolled_back_current_and_the_newest_other() -> None:
    tags = [_tag("old", 0), _tag("mid", 10), _tag("new", 20)]
    assert stale_registry_manifests(tags, current_tag="old") == ["sha256:mid"]


def test_registry_never_deletes_a_manifest_a_kept_tag_names() -> None:
    """Deleting a manifest deletes every tag on it: an old tag on the current image stays."""
    tags = [_tag("old", 0, "sha256:same"), _tag("mid", 10), _tag("cur", 20, "sha256:same")]
    assert stale_registry_manifests(tags, current_tag="cur", keep_previous=0) == ["sha256:mid"]


def test_registry_orders_by_time_not_by_text() -> None:
    """Fractions of a second of different lengths still sort by time."""
    early = RegistryTag("early", "sha256:early", "2026-12-03T09:00:00.9Z")
    late = RegistryTag("late", "sha256:late", "2026-12-03T09:00:00.10000000Z")
    later = RegistryTag("later", "sha256:later", "2026-12-03T09:00:01Z")
    assert stale_registry_manifests([late, early, later], current_tag="later") == ["sha256:late"]


def _engine(models: str, minute: int, *refs: str) -> EngineImage:
    digest = models * 16
    return EngineImage(f"sha256:{models}", digest, f"2026-12-03T09:{minute:02d}:00Z", refs)


def test_nodes_remove_older_model_images_by_their_digest_references() -> None:
    """Nodes pull by digest (no tag): the content label says which model image each one is."""
    images = [
        _engine("a", 0, f"{NODE_REPO}@sha256:1"),
        _engine("b", 10, f"{NODE_REPO}@sha256:2"),
        _engine("c", 20, f"{NODE_REPO}@sha256:3", f"{NODE_REPO}:{model_image_tag('c' * 16)}"),
    ]
    stale = stale_engine_references(images, repository=REPO, current_tag=model_image_tag("c" * 16))
    assert stale == [f"{NODE_REPO}@sha256:1"]


def test_nodes_keep_other_projects_unlabelled_images_and_foreign_references() -> None:
    other = EngineImage(
        "sha256:o", "o" * 64, "2026-12-03T08:00:00Z", ("r:5000/tfstack/models-x@sha256:9",)
    )
    unlabelled = EngineImage("sha256:u", "", "2026-12-03T08:00:00Z", (f"{NODE_REPO}@sha256:8",))
    lookalike = _engine("d", 1, f"r:5000/someone/{REPO}@sha256:7", f"{NODE_REPO}@sha256:6")
    images = [other, unlabelled, lookalike, _engine("e", 2, f"{NODE_REPO}@sha256:5")]
    images.append(_engine("f", 3, f"{NODE_REPO}@sha256:4"))
    stale = stale_engine_references(images, repository=REPO, current_tag=model_image_tag("f" * 16))
    assert stale == [f"{NODE_REPO}@sha256:6"]


def test_reference_repository_strips_tag_and_digest_but_not_the_port() -> None:
    assert reference_repository(f"{NODE_REPO}:abcd") == NODE_REPO
    assert reference_repository(f"{NODE_REPO}@sha256:12") == NODE_REPO
    assert reference_repository("tfstack-registry:5000/x") == "tfstack-registry:5000/x"
    assert reference_repository("x:1") == "x"


def test_parse_engine_images_reads_label_time_and_every_reference() -> None:
    text = json.dumps(
        [
            {
                "Id": "sha256:abc",
                "Created": "2026-12-03T09:00:00.5Z",
                "RepoTags": [f"{NODE_REPO}:t"],
                "RepoDigests": [f"{NODE_REPO}@sha256:d"],
                "Config": {"Labels": {"org.tfstack.models-digest": "f" * 64}},
            },
            {"Id": "sha256:def", "Created": "x", "RepoTags": None, "Config": {"Labels": None}},
        ]
    )
    first, second = parse_engine_images(text)
    assert first == EngineImage(
        "sha256:abc",
        "f" * 64,
        "2026-12-03T09:00:00.5Z",
        (f"{NODE_REPO}:t", f"{NODE_REPO}@sha256:d"),
    )
    assert second.models_digest == "" and second.references == ()
