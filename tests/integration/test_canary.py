"""Weighted canaries (``rollout --traffic``) on real containers: two replicas behind the door.

One throw-away stack (``tfstack.bench.canary.CanaryScenario``: half_plus_two v1, ``stable: 1``,
``models[].slo`` sized for seconds-long windows) serves the three tests in order; each leaves v1
stable. Steady bounded load runs through the door (REST and gRPC, unversioned and ``stable``);
x = 1 answers 2.5 from v1 and 3.5 from every candidate.

* a slow candidate is rolled back at its first step by the latency gates, 0 failed requests;
* a candidate failing for x >= 10 is rolled back by the error gate; the failed requests are
  bounded by the first step's share of one window;
* a good candidate walks 10 -> 50 -> 100 and is promoted with 0 failed requests, and the split
  the clients observe is within 3 points of the asked share at 10 % and 50 %; the canary was
  warmed with the model's samples, all counted before the first traffic step began.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_rollout import Marks, kill_during, say, serving_image
from tfstack.bench.canary import CanaryScenario, write_canary_candidates
from tfstack.bench.loadgen import LoadGenerator, LoadReport, Sample, stack_senders
from tfstack.bench.rollout import MODEL, V1_VALUE, V2_VALUE
from tfstack.errors import RolloutError
from tfstack.rollout.canary import WARMUP_ROUNDS, canary_replica
from tfstack.rollout.journal import read_journal, status_summary
from tfstack.rollout.plan import RolloutRequest
from tfstack.rollout.run import run_rollout
from tfstack.serving.metrics import REQUEST_LATENCY

__all__ = ["serving_image"]  # the module-scoped image fixture, shared with test_rollout

pytestmark = pytest.mark.integration

WINDOW_S = 5.0
SPLIT_WINDOW_S = 20.0
SPLIT_RATE = 200.0  # req/s of the unversioned counter during the 10 % and 50 % steps
SPLIT_MIN_COUNT = 1000  # 3 points at 50 % is then over 2.5 standard deviations
SETTLE_S = 1.5  # the share is set at the start of a step; count from a little later
SPLIT_TOLERANCE = 3.0  # percentage points
BAD_X = 20.0
INFERENCE_APIS = ("predict", "classify", "regress")  # the latency histogram's API label


@pytest.fixture(scope="module")
def canary_candidates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_canary_candidates(tmp_path_factory.mktemp("canary-candidates"))


@pytest.fixture(scope="module")
def stack(
    docker_client: docker.DockerClient,
    serving_image: tuple[str, bool],
    canary_candidates: dict[str, Path],
) -> Iterator[CanaryScenario]:
    # Another server image (TFSTACK_SERVING_IMAGE) has no /readyz: the door checks it by TCP,
    # and the canary's readiness is asked through the model status API either way.
    image, healthcheck = serving_image
    made = CanaryScenario(
        docker_client,
        image,
        canary_candidates,
        healthcheck=healthcheck,
    )
    try:
        made.up()
        yield made
    finally:
        made.down()


def spec_model(stack: CanaryScenario) -> dict:  # type: ignore[type-arg]
    spec = yaml.safe_load(stack.spec_path.read_text())
    return next(m for m in spec["models"] if m["name"] == MODEL)


def canaries(client: docker.DockerClient, stack: CanaryScenario) -> list[object]:
    selector = [f"org.tfstack.project={stack.project}", "org.tfstack.role=canary"]
    return list(client.containers.list(all=True, filters={"label": selector}))


def assert_rolled_back(
    stack: CanaryScenario, client: docker.DockerClient, original_spec: str, gate: str
) -> None:
    assert stack.spec_path.read_text() == original_spec
    assert sorted(p.name for p in stack.model_dir.iterdir()) == ["1"]
    assert canaries(client, stack) == []
    journal = read_journal(stack.root, stack.project, MODEL)
    assert journal is not None and journal.status == "failed"
    assert journal.error is not None and gate in journal.error, journal.error
    assert journal.record("traffic_10") is not None
    assert journal.record("traffic_10").status == "failed"  # type: ignore[union-attr]


def rejected(stack: CanaryScenario, source: Path, marks: Marks, **request: Any) -> str:
    """Roll ``source`` out as version 2 with --traffic 10,50,100; it must be rolled back: the
    error's text (printed)."""
    with pytest.raises(RolloutError) as caught:
        run_rollout(
            stack.context(say),
            RolloutRequest(
                MODEL,
                version=2,
                source=str(source),
                traffic=(10, 50, 100),
                analysis_s=WINDOW_S,
                **request,
            ),
            on_step=marks,
        )
    message = str(caught.value)
    print(message, file=sys.stderr)
    return message


def test_slow_candidate_is_rolled_back_at_the_first_step_without_failed_requests(
    stack: CanaryScenario, canary_candidates: dict[str, Path], docker_client: docker.DockerClient
) -> None:
    original = stack.spec_path.read_text()
    marks = Marks()
    with stack.load_with({"instances": [1.0]}, max_seconds=120, rate=40) as generator:
        time.sleep(1.0)
        # A latency factor that lets it past the side instance: the gates must judge it.
        message = rejected(stack, canary_candidates["slow"], marks, latency_factor=1000.0)
        time.sleep(1.0)
    report = generator.report
    print(report.summary(), file=sys.stderr)
    assert "p99" in message or "latency" in message, message
    assert "traffic_50:start" not in marks.times
    assert not report.failures, report.summary()
    slow_answers = [s for s in report.samples if s.value == V2_VALUE]
    assert slow_answers, "the canary never took traffic"
    assert all(s.sent_at >= marks.times["traffic_10:start"] for s in slow_answers)
    assert_rolled_back(stack, docker_client, original, "p99")
    settled = report.window(marks.times.get("canary_stop:done", time.monotonic()) + 0.5)
    assert all(s.value == V1_VALUE for s in settled)


def test_faulty_candidate_is_rolled_back_with_failures_bounded_by_the_first_step(
    stack: CanaryScenario, canary_candidates: dict[str, Path], docker_client: docker.DockerClient
) -> None:
    original = stack.spec_path.read_text()
    marks = Marks()
    good = stack.load_with({"instances": [1.0]}, max_seconds=120, rate=30)
    bad = stack.load_with({"instances": [BAD_X]}, max_seconds=120, rate=20)
    with good, bad:
        time.sleep(1.0)
        message = rejected(stack, canary_candidates["faulty"], marks)
        rolled_back_at = time.monotonic()
        time.sleep(1.0)
    print(good.report.summary(), bad.report.summary(), sep="\n", file=sys.stderr)
    assert "error_rate" in message, message
    assert not good.report.failures, good.report.summary()
    failed = bad.report.failures
    start, stop = marks.times["traffic_10:start"], rolled_back_at
    step_s = stop - start
    # Half of the bad load names no version (the other half asks `stable`); 10 % of that goes
    # to the candidate for at most one window: the bound, with room for chance.
    expected = 0.10 * (bad.rate / 2) * step_s
    print(
        f"failed requests while the faulty candidate had 10 %: {len(failed)} "
        f"(expected ~{expected:.1f} over {step_s:.1f} s)",
        file=sys.stderr,
    )
    assert len(failed) <= 3 * expected + 5, [f.error for f in failed[:3]]
    assert all(start <= f.sent_at < stop for f in failed)
    assert all(f.target.endswith("/default") for f in failed)
    assert_rolled_back(stack, docker_client, original, "error_rate")


def test_a_rollout_killed_during_a_traffic_step_is_aborted_share_and_canary_first(
    stack: CanaryScenario, canary_candidates: dict[str, Path], docker_client: docker.DockerClient
) -> None:
    """SIGKILL of `invoke rollout --traffic` while 10 % goes to the candidate: the share stays in
    the door (status shows it), `--abort` sets it to 0 and removes the canary before anything
    else; no client request fails and no v2 answer comes after the abort."""
    original = stack.spec_path.read_text()
    command = [
        sys.executable,
        "-m",
        "invoke",
        "rollout",
        "--spec",
        str(stack.spec_path),
        "--model",
        MODEL,
        "--version",
        "2",
        "--source",
        str(canary_candidates["good"]),
        "--traffic",
        "10,100",
        "--analysis-seconds",
        "60",
    ]
    with stack.load_with({"instances": [1.0]}, max_seconds=150, rate=40) as generator:
        kill_during(command, stack.root, stack.project, "traffic_10", after_s=4.0)
        summary = status_summary(stack.root, stack.project)
        assert summary is not None and summary[MODEL]["state"] == "interrupted"
        assert summary[MODEL]["step"] == "traffic_10"
        assert summary[MODEL]["traffic"] == {"version": 2, "percent": 10}
        time.sleep(2.0)
        # The dead process's share is still in the door: the candidate keeps answering.
        assert any(s.value == V2_VALUE for s in list(generator.report.samples))
        run_rollout(stack.context(say), RolloutRequest(MODEL), abort=True)
        aborted_at = time.monotonic()
        time.sleep(3.0)
    report = generator.report
    print(report.summary(), file=sys.stderr)
    assert not report.failures, report.summary()
    assert not [s for s in report.window(aborted_at) if s.value == V2_VALUE]
    assert stack.spec_path.read_text() == original
    assert sorted(p.name for p in stack.model_dir.iterdir()) == ["1"]
    assert canaries(docker_client, stack) == []
    assert status_summary(stack.root, stack.project) is None


def share(samples: list[Sample]) -> tuple[float, int]:
    """Percent of samples answered by the candidate, and how many were counted."""
    answered = [s for s in samples if s.ok and s.value in (V1_VALUE, V2_VALUE)]
    if not answered:
        return 0.0, 0
    return 100.0 * sum(s.value == V2_VALUE for s in answered) / len(answered), len(answered)


def test_good_candidate_walks_the_steps_is_promoted_and_the_split_is_accurate(
    stack: CanaryScenario, canary_candidates: dict[str, Path], docker_client: docker.DockerClient
) -> None:
    marks = Marks()
    steady = stack.load_with({"instances": [1.0]}, max_seconds=150, rate=30)
    # Unversioned requests only, as fast as allowed, while the 10 % and 50 % steps run: the
    # share the clients observe is counted from its answers (2.5: stable, 3.5: candidate).
    counter = LoadGenerator(
        stack_senders(
            MODEL,
            rest_url=stack.rest_url,
            grpc_target=stack.grpc_target,
            body={"instances": [1.0]},
            labels=(),
        ),
        rate=SPLIT_RATE,
        max_seconds=3 * SPLIT_WINDOW_S,
    )

    before_traffic: list[dict[tuple[str, str], tuple[float, float]] | Exception] = []

    def canary_inference() -> dict[tuple[str, str], tuple[float, float]] | Exception:
        """The canary's inference requests of the model (API, entrypoint) -> (count, latency
        sum in ms) as the first traffic step begins: the share is still 0, so only the warm-up
        has sent any; that step's window is baselined after this. (Its readiness polls count in
        request_count too, under another API.)"""
        try:
            spec = yaml.safe_load(stack.spec_path.read_text())
            found = canaries(docker_client, stack)
            assert len(found) == 1, found
            replica = canary_replica(
                docker_client,
                found[0],
                rest_port=spec["serving"]["rest_port"],
                grpc_port=spec["serving"]["grpc_port"],
            )
            path = (spec.get("monitoring") or {}).get("path", "/monitoring/prometheus/metrics")
            page = requests.get(f"{replica.rest_url}{path}", timeout=5)
            page.raise_for_status()
            seen: dict[tuple[str, str], tuple[float, float]] = {}
            for family in text_string_to_metric_families(page.text):
                for sample in family.samples:
                    labels = sample.labels
                    if labels.get("model_name") != MODEL or "API" not in labels:
                        continue
                    key = (labels.get("API", ""), labels.get("entrypoint", ""))
                    count, total = seen.get(key, (0.0, 0.0))
                    if sample.name == f"{REQUEST_LATENCY}_count":
                        count += sample.value
                    elif sample.name == f"{REQUEST_LATENCY}_sum":
                        total += sample.value / 1000.0
                    seen[key] = (count, total)
            return {key: value for key, value in seen.items() if key[0] in INFERENCE_APIS}
        except Exception as exc:  # asserted below, not raised inside the rollout's step hook
            return exc

    def on_step(name: str, event: str, at: float) -> None:
        marks(name, event, at)
        if (name, event) == ("traffic_10", "start"):
            before_traffic.append(canary_inference())
            counter.start()
        elif (name, event) == ("traffic_50", "done"):
            counter.stop()

    with steady:
        time.sleep(1.0)
        outcome = run_rollout(
            stack.context(say),
            RolloutRequest(
                MODEL,
                version=2,
                source=str(canary_candidates["good"]),
                traffic=(10, 50, 100),
                analysis_s=SPLIT_WINDOW_S,
            ),
            on_step=on_step,
        )
        time.sleep(2.0)
    report: LoadReport = steady.report
    counted_report = counter.report
    print(report.summary(), counted_report.summary(), sep="\n", file=sys.stderr)
    assert not report.failures, report.summary()
    assert not counted_report.failures, counted_report.summary()
    # Warmed: the spec's one sample x WARMUP_ROUNDS over REST, all in the canary's counters before
    # the first traffic step's baseline, so none of them is in a window.
    warmed = before_traffic[0]
    assert isinstance(warmed, dict), warmed
    print(f"canary before traffic_10 (count, latency sum ms): {warmed}", file=sys.stderr)
    assert {key: count for key, (count, _) in warmed.items()} == {
        ("predict", "REST"): WARMUP_ROUNDS
    }, warmed
    canary_start = outcome.journal.record("canary_start")
    assert canary_start is not None
    assert f"warmed with {WARMUP_ROUNDS} sample requests" in canary_start.detail
    names = [r.step.name for r in outcome.journal.steps]
    assert names[names.index("verify") :] == [
        "verify",
        "canary_start",
        "traffic_10",
        "traffic_50",
        "traffic_100",
        "load",
        "promote",
        "canary_stop",
    ]
    for percent in (10, 50):
        begin = marks.times[f"traffic_{percent}:start"] + SETTLE_S
        end = marks.times[f"traffic_{percent}:done"]
        sent = counted_report.window(begin, end)
        for transport in ("rest", "grpc"):
            part, counted = share([s for s in sent if s.target.startswith(transport)])
            print(f"split at {percent} %, {transport}: {part:.1f} % of {counted}", file=sys.stderr)
        observed, counted = share(sent)
        print(f"split at {percent} %: {observed:.1f} % of {counted} requests", file=sys.stderr)
        assert counted >= SPLIT_MIN_COUNT, counted
        assert abs(observed - percent) <= SPLIT_TOLERANCE, (percent, observed, counted)
    # `stable` clients move only when the label does; nobody sees v2 before the canary took it.
    first_new = report.first_with(lambda s: s.value == V2_VALUE)
    assert first_new is not None and first_new.sent_at >= marks.times["traffic_10:start"]
    stable_new = report.first_with(lambda s: s.target.endswith("/stable") and s.value == V2_VALUE)
    assert stable_new is not None and stable_new.sent_at >= marks.times["promote:start"]
    settled = report.window(marks.times["canary_stop:done"] + 0.5)
    assert settled and all(s.value == V2_VALUE for s in settled)
    model = spec_model(stack)
    assert model["labels"] == {"stable": 2}
    assert canaries(docker_client, stack) == []
    journal = read_journal(stack.root, stack.project, MODEL)
    assert journal is not None and journal.status == "done"
    traffic = journal.record("traffic_50")
    assert traffic is not None and "pass" in traffic.detail, traffic.detail if traffic else None
    with contextlib.suppress(docker.errors.APIError):
        docker_client.containers.prune(filters={"label": f"org.tfstack.project={stack.project}"})
