"""The uncompressed push's pure parts: the manifest it stores, the docker save manifest it reads,
the registry address, which base a model image is built from, which push path a spec resolves to."""

from __future__ import annotations

import hashlib
import json

import pytest

from tfstack.build.modelimage import is_layer_prefix
from tfstack.build.registrypush import (
    MANIFEST_V2,
    UNCOMPRESSED_LAYER,
    Blob,
    manifest_for,
    parse_save_manifest,
    split_registry,
)
from tfstack.errors import BuildError
from tfstack.spec.deploy import LOCAL_REGISTRY, SwarmTarget


def test_manifest_names_the_config_and_each_layer_uncompressed_in_order() -> None:
    config = Blob("sha256:" + "c" * 64, 1234)
    layers = [Blob("sha256:" + "1" * 64, 10), Blob("sha256:" + "2" * 64, 20)]
    document = json.loads(manifest_for(config, layers))
    assert document["schemaVersion"] == 2 and document["mediaType"] == MANIFEST_V2
    assert document["config"]["digest"] == config.digest and document["config"]["size"] == 1234
    assert [(x["digest"], x["size"], x["mediaType"]) for x in document["layers"]] == [
        (layers[0].digest, 10, UNCOMPRESSED_LAYER),
        (layers[1].digest, 20, UNCOMPRESSED_LAYER),
    ]


def test_manifest_bytes_are_stable() -> None:
    """The same image gives the same manifest digest (a second push changes nothing)."""
    config, layer = Blob("sha256:c", 1), Blob("sha256:l", 2)
    first = hashlib.sha256(manifest_for(config, [layer])).hexdigest()
    assert first == hashlib.sha256(manifest_for(config, [layer])).hexdigest()


def test_save_manifest_gives_config_and_layers_in_order() -> None:
    text = json.dumps(
        [{"Config": "abc.json", "RepoTags": ["x:1"], "Layers": ["1/layer.tar", "2/layer.tar"]}]
    )
    saved = parse_save_manifest(text)
    assert saved.config == "abc.json" and saved.layers == ("1/layer.tar", "2/layer.tar")


def test_save_manifest_with_two_images_is_refused() -> None:
    with pytest.raises(BuildError, match="exactly one image"):
        parse_save_manifest(json.dumps([{"Config": "a", "Layers": []}] * 2))


def test_split_registry_keeps_the_port_and_a_path_prefix() -> None:
    assert split_registry("127.0.0.1:5000") == ("127.0.0.1:5000", "")
    assert split_registry("reg.local:5000/team/") == ("reg.local:5000", "team/")


def test_layer_prefix() -> None:
    assert is_layer_prefix(["a"], ["a", "b"])
    assert is_layer_prefix(["a", "b"], ["a", "b"])
    assert not is_layer_prefix(["b"], ["a", "b"])
    assert not is_layer_prefix([], ["a"])
    assert not is_layer_prefix(["a", "b", "c"], ["a", "b"])


def test_auto_push_is_uncompressed_only_for_the_local_cluster_registry() -> None:
    assert SwarmTarget().layer_push() == "uncompressed"
    assert SwarmTarget(registry=LOCAL_REGISTRY, layers="gzip").layer_push() == "gzip"
    assert SwarmTarget(registry="swarm-registry.internal:5000").layer_push() == "gzip"
    remote = "swarm-registry.internal:5000"
    assert SwarmTarget(registry=remote, layers="uncompressed").layer_push() == "uncompressed"
