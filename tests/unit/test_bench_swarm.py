"""bench swarm's pure parts: engine timestamps, and what a node kill cost the clients."""

from __future__ import annotations

from types import SimpleNamespace

import docker.errors

from tfstack.bench.loadgen import LoadReport, Sample
from tfstack.bench.swarm import Failover, parse_timestamp, remove_run_images


def test_engine_timestamps_keep_their_fraction_and_zone() -> None:
    """Swarm and the engine write RFC 3339 in UTC with nanoseconds (or none)."""
    whole = parse_timestamp("2026-12-03T09:28:12Z")
    assert whole == 1796290092.0
    assert abs(parse_timestamp("2026-12-03T09:28:12.123456789Z") - whole - 0.123456) < 1e-6
    assert parse_timestamp("2026-12-03T09:28:12.5Z") - whole == 0.5


def test_failover_counts_slow_and_failed_requests_after_the_kill_only() -> None:
    """Before the kill nothing counts; after it, the last slow or failed request's send time."""
    samples = [
        Sample("rest/default", 99.0, 2.0, True),  # slow, but before the kill at 100
        Sample("rest/default", 100.2, 1.01, True),  # met the dead task, retried
        Sample("rest/default", 101.0, 0.005, True),
        Sample("rest/stable", 103.5, 0.004, False, error="ReadTimeout"),
        Sample("rest/default", 104.0, 0.006, True),
    ]
    failover = Failover(LoadReport(samples=samples), 100.0, 5.8, 24.0, [])
    assert failover.slow == 1
    assert failover.door_s == 3.5
    quiet = Failover(LoadReport(samples=samples[2:3]), 100.0, None, None, [])
    assert (quiet.slow, quiet.door_s) == (0, 0.0)


class _Image:
    def __init__(self, *tags: str) -> None:
        self.tags = list(tags)


class _Images:
    """The docker SDK's ``client.images`` over a fixed list; a tag in ``in_use`` refuses."""

    def __init__(self, images: list[_Image], in_use: set[str]) -> None:
        self.images, self.in_use = images, in_use
        self.removed: list[str] = []

    def list(self) -> list[_Image]:
        return self.images

    def remove(self, ref: str) -> None:
        if ref in self.in_use:
            raise docker.errors.APIError(f"conflict: {ref} is used by a running container")
        self.removed.append(ref)


def test_a_runs_images_and_push_tags_go_the_users_stay() -> None:
    """The run's serving tags and model images go under both names, the door's image only under
    the push name; the user's tags and an image in use stay."""
    images = _Images(
        [
            _Image("tfstack-it/swarm:ab12", "tfstack/serving-runtime:latest"),
            _Image("127.0.0.1:5000/tfstack-it/swarm:id-1", "127.0.0.1:5000/tfstack-it/swarm:id-2"),
            _Image("tfstack/models-it:1", "127.0.0.1:5000/tfstack/models-it:1"),
            _Image("tfstack/models-it-other:1", "tfstack/models-itx:1"),
            _Image("tfstack/frontend:latest", "127.0.0.1:5000/tfstack/frontend:id-9"),
            _Image("tfstack/models-it:in-use"),
        ],
        in_use={"tfstack/models-it:in-use"},
    )
    client = SimpleNamespace(images=images)
    removed = remove_run_images(
        client, ["tfstack-it/swarm", "tfstack/models-it"], ["tfstack/frontend"]
    )
    assert (
        removed
        == images.removed
        == [
            "tfstack-it/swarm:ab12",
            "127.0.0.1:5000/tfstack-it/swarm:id-1",
            "127.0.0.1:5000/tfstack-it/swarm:id-2",
            "tfstack/models-it:1",
            "127.0.0.1:5000/tfstack/models-it:1",
            "127.0.0.1:5000/tfstack/frontend:id-9",
        ]
    )


def test_run_repositories_are_glob_patterns() -> None:
    images = _Images([_Image("tfstack/models-bench-1a:x", "tfstack/models-other:x")], set())
    removed = remove_run_images(SimpleNamespace(images=images), ["tfstack/models-bench-*"])
    assert removed == ["tfstack/models-bench-1a:x"]
