"""Rollouts and rollbacks against real containers, under the bounded load generator.

Each test starts a throw-away project (``tfstack.bench.rollout.RolloutScenario``: half_plus_two v1
= 0.5x + 2 with ``latest: 1`` and ``stable: 1``, on free loopback ports) and runs about 50 req/s
(REST and gRPC, unlabelled and via ``stable``, x = 1) while it rolls out. Responses carry no version
over REST, so the math tells them apart: 2.5 is version 1, 3.5 is version 2 (gRPC also reports the
version). Each test asserts zero failed requests, that 3.5 appears only after the load step
(unlabelled) or the promote step (``stable``) began, and that bad versions never answered.

The image is the runtime image under a private tag (or ``TFSTACK_SERVING_IMAGE``, e.g. the official
tensorflow/serving image: the side instance uses the same image, so the trap design works there
unchanged). Everything created is removed by finalizers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import yaml

from tfstack.bench.loadgen import LoadReport, Sample
from tfstack.bench.rollout import MODEL, V1_VALUE, V2_VALUE, RolloutScenario, write_candidates
from tfstack.build.images import BuiltImage
from tfstack.core import textproto
from tfstack.errors import RolloutError
from tfstack.rollout.journal import read_journal, status_summary
from tfstack.rollout.plan import RolloutRequest
from tfstack.rollout.run import run_rollback, run_rollout
from tfstack.serving.client import ModelRef, RestClient

ROOT = Path(__file__).resolve().parents[2]
TAIL_S = 2.0  # load kept running after a step so the new state is observed


@pytest.fixture(scope="module")
def serving_image(
    docker_client: docker.DockerClient, request: pytest.FixtureRequest
) -> Iterator[tuple[str, bool]]:
    """(image, healthcheck): TFSTACK_SERVING_IMAGE as is, or the runtime image (private tag)."""
    other = os.environ.get("TFSTACK_SERVING_IMAGE")
    if other:
        yield other, False
        return
    built: BuiltImage = request.getfixturevalue("runtime_image")
    repository, tag = "tfstack-it/rollout", secrets.token_hex(4)
    docker_client.images.get(built.id).tag(repository, tag)
    yield f"{repository}:{tag}", True
    with contextlib.suppress(docker.errors.APIError):
        docker_client.images.remove(f"{repository}:{tag}", noprune=True)


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_candidates(tmp_path_factory.mktemp("rollout-candidates"))


@pytest.fixture
def scenario(
    docker_client: docker.DockerClient,
    serving_image: tuple[str, bool],
    candidates: dict[str, Path],
) -> Iterator[RolloutScenario]:
    image, healthcheck = serving_image
    made = RolloutScenario(docker_client, image, candidates, healthcheck=healthcheck)
    try:
        made.up()
        yield made
    finally:
        made.down()


class Marks:
    """Monotonic times of step starts/ends reported by ``apply``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def __call__(self, name: str, event: str, at: float) -> None:
        self.times.setdefault(f"{name}:{event}", at)


def say(text: str) -> None:
    print(f"tfstack: {text}", file=sys.stderr)


def new_math(sample: Sample) -> bool:
    return sample.value == V2_VALUE or sample.version == 2


def assert_no_failures(report: LoadReport) -> None:
    assert report.total >= 100, report.summary()
    assert not report.failures, report.summary()
    assert {s.value for s in report.samples} <= {V1_VALUE, V2_VALUE}, report.summary()


def assert_only_old_math(report: LoadReport) -> None:
    bad = [s for s in report.samples if new_math(s)]
    assert not bad, f"a rejected version answered {len(bad)} requests: {bad[:3]}"


def spec_model(scenario: RolloutScenario) -> dict:  # type: ignore[type-arg]
    spec = yaml.safe_load(scenario.spec_path.read_text())
    return next(m for m in spec["models"] if m["name"] == MODEL)


def served_versions(scenario: RolloutScenario) -> dict[int, str]:
    rest = RestClient(scenario.rest_url)
    try:
        return {s.version: s.state for s in rest.model_status(ModelRef(MODEL))}
    finally:
        rest.close()


def serving_logs(scenario: RolloutScenario, client: docker.DockerClient) -> str:
    selector = {"label": f"com.docker.compose.project={scenario.project}"}
    return "\n".join(
        c.logs().decode(errors="replace") for c in client.containers.list(filters=selector)
    )


def test_good_rollout_switches_math_only_after_load_and_promote(
    scenario: RolloutScenario, candidates: dict[str, Path]
) -> None:
    """A verified version reaches clients with zero failed requests: unlabelled clients switch to
    its math only once the load step began, `stable` clients only once promote began; the spec
    records the new state with its comments kept."""
    marks = Marks()
    with scenario.load(max_seconds=60) as generator:
        time.sleep(1.0)
        outcome = run_rollout(
            scenario.context(say),
            RolloutRequest(MODEL, version=2, source=str(candidates["good"])),
            on_step=marks,
        )
        time.sleep(TAIL_S)
    report = generator.report
    print(report.summary(), file=sys.stderr)
    assert_no_failures(report)
    assert [r.step.name for r in outcome.journal.steps] == [
        "pin",
        "stage",
        "verify",
        "load",
        "promote",
    ]
    first_new = report.first_with(new_math)
    assert first_new is not None, "version 2 never answered"
    assert first_new.sent_at >= marks.times["load:start"]
    first_stable_new = report.first_with(lambda s: s.target.endswith("/stable") and new_math(s))
    assert first_stable_new is not None
    assert first_stable_new.sent_at >= marks.times["promote:start"]
    settled = report.window(marks.times["promote:done"] + 0.2)
    assert settled and all(s.value == V2_VALUE for s in settled), report.summary()
    assert all(s.version == 2 for s in settled if s.target.startswith("grpc/"))
    model = spec_model(scenario)
    assert model["policy"] == {"specific": [1, 2]}
    assert model["labels"] == {"stable": 2}
    assert "# clients that care ask for this label" in scenario.spec_path.read_text()
    rendered = textproto.parse(
        (scenario.root / "config" / "models.config").read_text(), textproto.model_server_config()
    )
    (entry,) = rendered.model_config_list.config  # type: ignore[attr-defined]
    assert list(entry.model_version_policy.specific.versions) == [1, 2]
    assert dict(entry.version_labels) == {"stable": 2}
    journal = read_journal(scenario.root, scenario.project, MODEL)
    assert journal is not None and journal.status == "done"


def _assert_rejected(
    scenario: RolloutScenario,
    client: docker.DockerClient,
    report: LoadReport,
    original_spec: str,
) -> None:
    assert_no_failures(report)
    assert_only_old_math(report)
    assert sorted(p.name for p in scenario.model_dir.iterdir()) == ["1"]
    assert scenario.spec_path.read_text() == original_spec
    assert 2 not in served_versions(scenario)
    assert "version: 2}" not in serving_logs(scenario, client)
    verifiers = client.containers.list(
        all=True,
        filters={"label": [f"org.tfstack.project={scenario.project}", "org.tfstack.role=verifier"]},
    )
    assert verifiers == []
    journal = read_journal(scenario.root, scenario.project, MODEL)
    assert journal is not None and journal.status == "failed"


def test_corrupt_version_fails_in_the_side_instance_and_never_serves(
    scenario: RolloutScenario, candidates: dict[str, Path], docker_client: docker.DockerClient
) -> None:
    """A SavedModel with corrupt variables fails verification with the server's own error; the
    serving instance never loads it, clients see no failure and no new math, the version directory
    and the spec are back as they were."""
    original = scenario.spec_path.read_text()
    with scenario.load(max_seconds=60) as generator:
        time.sleep(1.0)
        with pytest.raises(RolloutError) as caught:
            run_rollout(
                scenario.context(say),
                RolloutRequest(MODEL, version=2, source=str(candidates["corrupt"])),
            )
        time.sleep(TAIL_S)
    report = generator.report
    print(report.summary(), file=sys.stderr)
    error = caught.value
    assert error.step == "verify"
    text = str(error)
    assert "side instance" in text
    assert any(word in text for word in ("DATA_LOSS", "Checksum", "corrupt", "Failed")), text
    assert "restored" in text
    _assert_rejected(scenario, docker_client, report, original)


def test_incompatible_signature_is_refused_before_anything_loads(
    scenario: RolloutScenario, candidates: dict[str, Path], docker_client: docker.DockerClient
) -> None:
    """A candidate whose serving signature changed is refused at the stage step with the
    differences as evidence; nothing else changes and clients never notice."""
    original = scenario.spec_path.read_text()
    with scenario.load(max_seconds=30) as generator:
        time.sleep(1.0)
        with pytest.raises(RolloutError) as caught:
            run_rollout(
                scenario.context(say),
                RolloutRequest(MODEL, version=2, source=str(candidates["incompatible"])),
            )
        time.sleep(TAIL_S)
    report = generator.report
    print(report.summary(), file=sys.stderr)
    assert caught.value.step == "stage"
    assert "input names differ" in str(caught.value)
    _assert_rejected(scenario, docker_client, report, original)


def kill_during(
    command: list[str], root: Path, project: str, step: str, *, after_s: float, timeout: float = 120
) -> None:
    """Run ``invoke rollout`` (``command``) and SIGKILL it ``after_s`` seconds into ``step``
    (read from its journal); its output is kept beside the project as rollout-killed.log."""
    output = root / "rollout-killed.log"
    with output.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                journal = read_journal(root, project, MODEL)
                record = journal.record(step) if journal is not None else None
                if record is not None and record.status == "running":
                    break
                assert process.poll() is None, (
                    f"the rollout ended before {step}:\n" + output.read_text(errors="replace")
                )
                time.sleep(0.1)
            else:
                pytest.fail(f"{step} never started:\n" + output.read_text(errors="replace"))
            time.sleep(after_s)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()


def test_rollout_killed_half_way_is_resumed(
    scenario: RolloutScenario, candidates: dict[str, Path], docker_client: docker.DockerClient
) -> None:
    """`invoke rollout` killed with SIGKILL during verification leaves an interrupted journal
    (shown by status); `--resume` finishes it. Clients see no failure, and no new math before the
    resumed load step."""
    marks = Marks()
    command = [
        sys.executable,
        "-m",
        "invoke",
        "rollout",
        "--spec",
        str(scenario.spec_path),
        "--model",
        MODEL,
        "--version",
        "2",
        "--source",
        str(candidates["good"]),
    ]
    with scenario.load(max_seconds=75) as generator:
        kill_during(command, scenario.root, scenario.project, "verify", after_s=1.0)
        killed_at = time.monotonic()
        summary = status_summary(scenario.root, scenario.project)
        assert summary is not None and summary[MODEL]["state"] == "interrupted"
        assert summary[MODEL]["step"] == "verify"
        assert "--resume" in summary[MODEL]["next"]
        with pytest.raises(RolloutError, match="interrupted"):
            run_rollout(
                scenario.context(say),
                RolloutRequest(MODEL, version=3, source=str(candidates["good"])),
            )
        time.sleep(1.0)
        outcome = run_rollout(
            scenario.context(say), RolloutRequest(MODEL), resume=True, on_step=marks
        )
        time.sleep(TAIL_S)
    report = generator.report
    print(report.summary(), file=sys.stderr)
    assert_no_failures(report)
    assert not [s for s in report.window(None, killed_at) if new_math(s)]
    first_new = report.first_with(new_math)
    assert first_new is not None and first_new.sent_at >= marks.times["load:start"]
    assert "verify:start" in marks.times and "pin:start" not in marks.times
    assert outcome.journal.status == "done"
    assert spec_model(scenario)["labels"] == {"stable": 2}
    assert served_versions(scenario).get(2) == "AVAILABLE"
    assert not [p for p in scenario.model_dir.iterdir() if p.name.startswith(".")]


def test_rollback_returns_every_client_to_the_previous_version(
    scenario: RolloutScenario, candidates: dict[str, Path]
) -> None:
    """After a rollout to v2, `rollback` moves stable back to v1 and unloads v2 in one reload:
    zero failed requests, within the 5 s target, and afterwards every client (unlabelled and
    `stable`, REST and gRPC) gets version 1's math again."""
    run_rollout(
        scenario.context(say), RolloutRequest(MODEL, version=2, source=str(candidates["good"]))
    )
    marks = Marks()
    with scenario.load(max_seconds=30) as generator:
        time.sleep(2.0)
        started = time.monotonic()
        outcome = run_rollback(scenario.context(say), on_step=marks)
        took = time.monotonic() - started
        time.sleep(TAIL_S)
    report = generator.report
    print(report.summary(), file=sys.stderr)
    assert_no_failures(report)
    before = report.window(None, marks.times["rollback:start"])
    assert before and all(s.value == V2_VALUE for s in before)
    after = report.window(marks.times["rollback:done"])
    assert after and all(s.value == V1_VALUE for s in after), report.summary()
    assert took <= 5.0, f"rollback took {took:.1f}s"
    assert outcome.journal.status == "done"
    assert spec_model(scenario)["labels"] == {"stable": 1}
    assert spec_model(scenario)["policy"] == {"specific": [1]}
    assert served_versions(scenario).get(2) != "AVAILABLE"
    assert (scenario.model_dir / "2").is_dir()  # rollback never deletes a version


def test_canary_promote_retire_and_rollback_of_a_retired_version(
    scenario: RolloutScenario, candidates: dict[str, Path]
) -> None:
    """--canary stops with stable on v1 (only `canary` and unlabelled clients get v2); --promote
    with retirement moves stable to v2 and unloads v1 after the drain; rollback then loads v1
    again before moving the label. Zero failed requests throughout."""
    marks = Marks()
    context = scenario.context(say)
    with scenario.load(max_seconds=60) as generator:
        time.sleep(1.0)
        canary = run_rollout(
            context,
            RolloutRequest(MODEL, version=2, source=str(candidates["good"]), canary=True),
            on_step=marks,
        )
        assert canary.journal.status == "canary"
        assert spec_model(scenario)["labels"] == {"stable": 1, "canary": 2}
        canary_done = time.monotonic()
        time.sleep(TAIL_S)
        promoted_at = time.monotonic()
        run_rollout(
            context,
            RolloutRequest(MODEL, promote=True, keep_previous=False, drain_s=1.0),
        )
        promote_done = time.monotonic()
        assert spec_model(scenario)["policy"] == {"specific": [2]}
        assert served_versions(scenario).get(1) != "AVAILABLE"
        time.sleep(TAIL_S)
        rollback_at = time.monotonic()
        outcome = run_rollback(context)
        rolled_back = time.monotonic()
        time.sleep(TAIL_S)
    report = generator.report
    print(report.summary(), file=sys.stderr)
    assert_no_failures(report)
    stable_during_canary = [
        s for s in report.window(None, promoted_at) if s.target.endswith("/stable")
    ]
    assert stable_during_canary and all(s.value == V1_VALUE for s in stable_during_canary)
    unlabelled_canary = report.window(canary_done, promoted_at)
    assert any(s.value == V2_VALUE for s in unlabelled_canary if s.target.endswith("/default"))
    between = report.window(promote_done, rollback_at)
    assert between and all(s.value == V2_VALUE for s in between)
    assert [r.step.name for r in outcome.journal.steps] == ["reload_previous", "rollback"]
    after = report.window(rolled_back)
    assert after and all(s.value == V1_VALUE for s in after)
    assert spec_model(scenario)["labels"] == {"stable": 1}
