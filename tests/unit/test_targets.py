"""One deployment target interface (tfstack.stack.targets): which target a command gets, the calls
each target makes for each command, and the usage errors for what a target does not have, with
every target's functions replaced by recording fakes (no Docker, no Swarm, no cluster)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import tasks
from invoke.context import MockContext
from invoke.exceptions import Exit

import tfstack.kubernetes
import tfstack.render
import tfstack.rollout
import tfstack.stack.lifecycle
import tfstack.stack.predict
import tfstack.stack.swarm
import tfstack.stack.swarm_rollout
from tests.unit.specfixtures import Project, valid_spec
from tfstack.errors import UsageError
from tfstack.kubernetes import KubernetesRollout
from tfstack.rollout import RolloutRequest
from tfstack.rollout.journal import Journal, ModelState
from tfstack.serving.client import ModelRef
from tfstack.stack.targets import (
    ComposeTarget,
    Described,
    Documented,
    KubernetesTarget,
    SwarmTarget,
    Target,
    target_for,
)

REF = ModelRef("m", version=2)
BODY = {"instances": [1.0]}


@dataclass
class Report:
    """Stands in for every target's reports: lines to print, a JSON document, ok."""

    lines: list[str] = field(default_factory=lambda: ["a report line"])
    ok: bool = True
    changes: list[Any] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    dry_run: bool = False

    def describe(self) -> list[str]:
        return self.lines

    def to_json(self) -> dict[str, Any]:
        return {"lines": self.lines, "ok": self.ok}


@dataclass
class TextOnly:
    """Stands in for the Kubernetes rollout plan: text to print and no JSON form."""

    text: str

    def describe(self) -> list[str]:
        return [self.text]


Call = tuple[str, tuple[Any, ...], dict[str, Any]]


class FakeLifecycle:
    """Records how a target builds tfstack.stack.lifecycle.Lifecycle and what it calls."""

    def __init__(self, calls: list[Call], spec_path: Path, **kwargs: Any) -> None:
        self.record = calls
        calls.append(("Lifecycle", (spec_path,), kwargs))

    def up(self, **kwargs: Any) -> Report:
        self.record.append(("Lifecycle.up", (), kwargs))
        return Report()

    def down(self, **kwargs: Any) -> list[str]:
        self.record.append(("Lifecycle.down", (), kwargs))
        return ["container demo-serving-1"]

    def status(self) -> Report:
        self.record.append(("Lifecycle.status", (), {}))
        return Report(ok=False)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Every function a target may call, replaced by one that records its arguments."""
    recorded: list[Call] = []

    def recorder(name: str, result: Any) -> Any:
        def fake(*args: Any, **kwargs: Any) -> Any:
            recorded.append((name, args, kwargs))
            return result

        return fake

    monkeypatch.setattr(
        tfstack.stack.lifecycle,
        "Lifecycle",
        lambda spec_path, **kwargs: FakeLifecycle(recorded, spec_path, **kwargs),
    )
    fakes: list[tuple[Any, str, Any]] = [
        (tfstack.render, "render_to_disk", Report()),
        (tfstack.render, "plan_render", ["compose plan"]),
        (tfstack.stack.predict, "predict", {"predictions": [2.5]}),
        (tfstack.rollout, "run_rollout", Report()),
        (tfstack.rollout, "run_rollback", Report()),
        (tfstack.stack.swarm, "render_swarm_to_disk", Report()),
        (tfstack.stack.swarm, "swarm_plan", ["swarm plan"]),
        (tfstack.stack.swarm, "swarm_up", Report(lines=["stack on the swarm: deploy"])),
        (tfstack.stack.swarm, "swarm_down", ["service demo_serving"]),
        (tfstack.stack.swarm, "swarm_status", Report(lines=["swarm: NOT OK"], ok=False)),
        (tfstack.stack.swarm, "swarm_predict", {"predictions": [3.5]}),
        (tfstack.stack.swarm_rollout, "swarm_rollout", Report()),
        (tfstack.stack.swarm_rollout, "swarm_rollback", Report()),
        (tfstack.kubernetes, "render_kubernetes", Report()),
        (tfstack.kubernetes, "kubernetes_rollout_plan", TextOnly("Kubernetes rollout")),
    ]
    for module, name, result in fakes:
        monkeypatch.setattr(module, name, recorder(name, result))
    return recorded


def say(text: str) -> None:
    """A progress callback the tests can recognise."""


def progress(text: str) -> None:
    """A live-display callback the tests can recognise."""


SPEC = Path("/p/config/stack.yaml")
ROOT = Path("/src")
PROJECT = SPEC.resolve().parent.parent


def compose() -> ComposeTarget:
    return ComposeTarget(SPEC, source_root=ROOT, say=say)


def swarm() -> SwarmTarget:
    return SwarmTarget(SPEC, source_root=ROOT, say=say)


def kubernetes(*, local: bool) -> KubernetesTarget:
    return KubernetesTarget(SPEC, source_root=ROOT, local=compose() if local else None)


# --------------------------------------------------------------------------- choosing the target


def _write(project: Project, deploy: dict[str, Any]) -> Path:
    data = valid_spec()
    if deploy.get("target") == "kubernetes":
        data["serving"] |= {
            "image": "tfstack/serving-runtime:0.1.0",
            "resources": {"cpus": 1, "memory": "1g"},
        }
    data["deploy"] = deploy
    return project.write(data)


@pytest.mark.parametrize(
    ("deploy", "override", "expected"),
    [
        ({"target": "compose"}, "", ComposeTarget),
        ({"target": "swarm"}, "", SwarmTarget),
        ({"target": "compose"}, "swarm", SwarmTarget),
        ({"target": "swarm"}, "compose", ComposeTarget),
        ({"target": "kubernetes", "kubernetes": {"model_claim": "models"}}, "", KubernetesTarget),
        ({"target": "compose"}, "kubernetes", KubernetesTarget),
    ],
)
def test_target_for_takes_the_override_else_the_spec(
    tmp_path: Path, deploy: dict[str, Any], override: str, expected: type[Target]
) -> None:
    """--target wins; without it the spec's deploy.target chooses."""
    spec = _write(Project(tmp_path).with_models(), deploy)
    chosen = target_for(spec, override, source_root=tmp_path)
    assert isinstance(chosen, expected)
    assert chosen.name == (override or deploy["target"])


def test_only_the_specs_kubernetes_target_keeps_the_local_compose_stack(tmp_path: Path) -> None:
    """deploy.target kubernetes keeps the Compose stack CI rehearses on; --target kubernetes not."""
    project = Project(tmp_path).with_models()
    _write(project, {"target": "kubernetes", "kubernetes": {"model_claim": "models"}})
    from_spec = target_for(project.spec, source_root=tmp_path)
    explicit = target_for(project.spec, "kubernetes", source_root=tmp_path)
    assert isinstance(from_spec, KubernetesTarget) and isinstance(explicit, KubernetesTarget)
    assert isinstance(from_spec.local, ComposeTarget) and explicit.local is None


def test_target_for_refuses_an_unknown_target(tmp_path: Path) -> None:
    """An unknown --target is a usage error naming the targets."""
    spec = _write(Project(tmp_path).with_models(), {"target": "compose"})
    with pytest.raises(UsageError, match="compose or kubernetes or swarm"):
        target_for(spec, "nomad", source_root=tmp_path)


# --------------------------------------------------------------------------- the calls per target

Command = tuple[str, dict[str, Any]]
RENDER: Command = ("render", {"dry_run": True})
PLAN: Command = ("plan", {})
UP: Command = ("up", {"timeout": 42.0, "dry_run": True, "say": say, "progress": progress})
DOWN: Command = ("down", {"volumes": True})
STATUS: Command = ("status", {})


@pytest.mark.parametrize(
    ("make", "command", "expected"),
    [
        (compose, RENDER, [("render_to_disk", (SPEC, ROOT), {"dry_run": True})]),
        (swarm, RENDER, [("render_swarm_to_disk", (SPEC, ROOT), {"dry_run": True})]),
        (
            lambda: kubernetes(local=False),
            RENDER,
            [("render_kubernetes", (SPEC, ROOT), {"dry_run": True})],
        ),
        (compose, PLAN, [("plan_render", (SPEC, ROOT), {})]),
        (swarm, PLAN, [("swarm_plan", (SPEC, PROJECT), {})]),
        (
            lambda: kubernetes(local=False),
            PLAN,
            [("render_kubernetes", (SPEC, ROOT), {"dry_run": True})],
        ),
        (
            compose,
            UP,
            [
                (
                    "Lifecycle",
                    (SPEC,),
                    {"source_root": ROOT, "say": say, "progress": progress},
                ),
                ("Lifecycle.up", (), {"timeout": 42.0, "dry_run": True}),
            ],
        ),
        (
            swarm,
            UP,
            [("swarm_up", (SPEC, PROJECT), {"timeout": 300.0, "dry_run": True, "say": say})],
        ),
        (
            compose,
            DOWN,
            [
                ("Lifecycle", (SPEC,), {"source_root": ROOT, "say": say}),
                ("Lifecycle.down", (), {"volumes": True}),
            ],
        ),
        (swarm, DOWN, [("swarm_down", (SPEC, PROJECT), {})]),
        (
            compose,
            STATUS,
            [
                ("Lifecycle", (SPEC,), {"source_root": ROOT, "say": say}),
                ("Lifecycle.status", (), {}),
            ],
        ),
        (swarm, STATUS, [("swarm_status", (SPEC, PROJECT), {})]),
        (
            lambda: kubernetes(local=True),
            STATUS,
            [
                ("Lifecycle", (SPEC,), {"source_root": ROOT, "say": say}),
                ("Lifecycle.status", (), {}),
            ],
        ),
    ],
)
def test_each_target_delegates_to_its_own_functions(
    calls: list[Call], make: Any, command: tuple[str, dict[str, Any]], expected: list[Call]
) -> None:
    """render, plan, up, down and status reach the target's function with the right arguments."""
    method, kwargs = command
    getattr(make(), method)(**kwargs)
    assert calls == expected


def test_a_swarm_up_waits_at_least_five_minutes_and_longer_when_asked(calls: list[Call]) -> None:
    """A Swarm up pushes images and waits on every node: its timeout never drops below 300 s."""
    swarm().up(timeout=900.0, dry_run=False, say=say, progress=progress)
    assert calls[-1][2]["timeout"] == 900.0


def test_predict_reaches_the_compose_client_or_the_swarm_door(calls: list[Call]) -> None:
    """Compose predict gets the key and CA file; Swarm predict goes through the door without."""
    options: dict[str, Any] = {"grpc": True, "signature": "sig"}
    ca_file = Path("ca.pem")
    assert compose().predict(REF, BODY, api_key="k", ca_file=ca_file, **options) == {
        "predictions": [2.5]
    }
    assert swarm().predict(REF, BODY, **options) == {"predictions": [3.5]}
    assert calls == [
        ("predict", (SPEC, REF, BODY), {**options, "api_key": "k", "ca_file": ca_file}),
        ("swarm_predict", (SPEC, REF, BODY), options),
    ]


@pytest.mark.parametrize(
    ("make", "rollout", "rollback"),
    [
        (compose, "run_rollout", "run_rollback"),
        (swarm, "swarm_rollout", "swarm_rollback"),
    ],
)
def test_rollout_and_rollback_run_the_targets_runner_with_a_context(
    calls: list[Call], make: Any, rollout: str, rollback: str
) -> None:
    """Compose and Swarm roll a model out with the request as given and the spec's project."""
    request = RolloutRequest("m", version=2, source="/candidate", canary=True)
    make().rollout(request, dry_run=True, resume=False, abort=False)
    make().rollback("m", dry_run=True)
    (name, (context, passed), kwargs), (back, (back_context,), back_kwargs) = calls
    assert (name, back) == (rollout, rollback)
    assert passed is request
    assert kwargs == {"dry_run": True, "resume": False, "abort": False}
    assert back_kwargs == {"dry_run": True}
    for made in (context, back_context):
        assert (made.spec_path, made.root, made.model, made.say) == (SPEC, PROJECT, "m", say)


def test_the_kubernetes_rollout_is_the_manifest_plan_for_the_new_images(
    calls: list[Call],
) -> None:
    """rollout on Kubernetes passes the images and --dry-run on; the model options are unused."""
    kubernetes(local=False).rollout(
        RolloutRequest(""), dry_run=True, model_image="reg/m@sha256:1", serving_image=None
    )
    assert calls == [
        (
            "kubernetes_rollout_plan",
            (SPEC, ROOT),
            {"dry_run": True, "model_image": "reg/m@sha256:1", "serving_image": None},
        )
    ]


def test_the_specs_kubernetes_target_runs_the_local_stack(calls: list[Call]) -> None:
    """With deploy.target kubernetes, up, down, predict and rollback run on Compose."""
    target = kubernetes(local=True)
    target.up(timeout=1.0, dry_run=False, say=say, progress=progress)
    target.down(volumes=False)
    target.predict(REF, BODY)
    target.rollback("m")
    assert [name for name, _, _ in calls] == [
        "Lifecycle",
        "Lifecycle.up",
        "Lifecycle",
        "Lifecycle.down",
        "predict",
        "run_rollback",
    ]


# --------------------------------------------------------------------------- not on this target


@pytest.mark.parametrize(
    ("command", "instead"),
    [
        (lambda t: t.up(timeout=1.0, dry_run=False, say=say, progress=progress), "kubectl apply"),
        (lambda t: t.down(volumes=False), "kubectl delete"),
        (lambda t: t.status(), "kubectl get"),
        (lambda t: t.predict(REF, BODY), "Ingress"),
        (lambda t: t.rollback("m"), "kubectl rollout undo"),
    ],
)
def test_an_explicit_kubernetes_target_refuses_the_running_stack_commands(
    calls: list[Call], command: Any, instead: str
) -> None:
    """up, down, status, predict, rollback --target kubernetes: exit 2, what to run instead,
    and nothing called."""
    with pytest.raises(UsageError) as caught:
        command(kubernetes(local=False))
    assert caught.value.exit_code == 2
    assert "--target kubernetes" in caught.value.message
    assert caught.value.hint is not None
    assert instead in caught.value.hint and "--target compose" in caught.value.hint
    assert calls == []


def test_swarm_predict_refuses_the_doors_key_and_certificate(calls: list[Call]) -> None:
    """--api-key or --ca-file with --target swarm: exit 2 with a hint; no request sent."""
    for options in ({"api_key": "k"}, {"ca_file": Path("ca.pem")}):
        with pytest.raises(UsageError) as caught:
            swarm().predict(REF, BODY, **options)
        assert str(caught.value).startswith("--api-key and --ca-file: not with --target swarm")
        assert caught.value.hint is not None and "--target compose" in caught.value.hint
    assert calls == []


def test_swarm_rollout_takes_a_weighted_canary(calls: list[Call]) -> None:
    """--traffic with --target swarm reaches the Swarm's rollout with its steps and windows."""
    request = RolloutRequest("m", version=2, traffic=(10, 100), analysis_s=6.0)
    swarm().rollout(request)
    name, (_, passed), _ = calls[0]
    assert name == "swarm_rollout" and passed.traffic == (10, 100) and passed.analysis_s == 6.0


@pytest.mark.parametrize("make", [compose, swarm])
@pytest.mark.parametrize(
    ("request_", "flags", "message"),
    [
        (RolloutRequest("", version=2), {}, "--model is required"),
        (RolloutRequest("m"), {}, "--version is required"),
    ],
)
def test_a_model_rollout_needs_model_and_version(
    calls: list[Call],
    make: Any,
    request_: RolloutRequest,
    flags: dict[str, Any],
    message: str,
) -> None:
    """Compose and Swarm refuse a rollout without --model, or --version (exit 2)."""
    with pytest.raises(UsageError, match=message):
        make().rollout(request_, **flags)
    assert calls == []


@pytest.mark.parametrize(
    ("request_", "flags"),
    [
        (RolloutRequest("m", promote=True), {}),
        (RolloutRequest("m"), {"resume": True}),
        (RolloutRequest("m"), {"abort": True}),
    ],
)
def test_promote_resume_and_abort_need_no_version(
    calls: list[Call], request_: RolloutRequest, flags: dict[str, Any]
) -> None:
    """--promote, --resume and --abort act on the rollout in progress: no --version needed."""
    compose().rollout(request_, **flags)
    assert [name for name, _, _ in calls] == ["run_rollout"]


# --------------------------------------------------------------------------- through the tasks


def test_tasks_turn_a_refused_combination_into_exit_2_with_its_hint(calls: list[Call]) -> None:
    """The task layer prints the target's usage error with its hint and exits 2."""
    with pytest.raises(Exit) as caught:
        tasks.up(MockContext(), target="kubernetes")
    assert caught.value.code == 2
    message = str(caught.value.message)
    assert message.startswith("tfstack: error: `up --target kubernetes`")
    assert "\n  hint: " in message
    with pytest.raises(Exit) as predicted:
        tasks.predict(MockContext(), model="m", data="{}", target="swarm", api_key="k")
    assert predicted.value.code == 2
    assert str(predicted.value.message).startswith(
        "tfstack: error: --api-key and --ca-file: not with --target swarm"
    )
    assert calls == []


def test_swarm_tasks_print_the_reports_lines_and_exit_codes(
    calls: list[Call], capsys: pytest.CaptureFixture[str]
) -> None:
    """up and status --target swarm print describe(); a status that is not ok exits 1."""
    tasks.up(MockContext(), target="swarm")
    assert capsys.readouterr().out == "stack on the swarm: deploy\n"
    with pytest.raises(Exit) as caught:
        tasks.status(MockContext(), target="swarm")
    assert caught.value.code == 1
    assert capsys.readouterr().out == "swarm: NOT OK\n"
    with pytest.raises(Exit):
        tasks.status(MockContext(), target="swarm", json_=True)
    assert json.loads(capsys.readouterr().out) == {"lines": ["swarm: NOT OK"], "ok": False}
    tasks.down(MockContext(), target="swarm")
    assert capsys.readouterr().out == "removed service demo_serving\nstack down\n"


def test_kubernetes_rollout_prints_its_text_even_with_json(
    calls: list[Call], capsys: pytest.CaptureFixture[str]
) -> None:
    """The Kubernetes rollout plan has no JSON form: --json still prints the text."""
    tasks.rollout(MockContext(), target="kubernetes", dry_run=True, model_image="x", json_=True)
    assert capsys.readouterr().out == "Kubernetes rollout\n"
    assert calls[0][2]["model_image"] == "x"


def test_only_the_rollout_outcome_has_a_json_form() -> None:
    """The task prints JSON for reports that have a document: a rollout's outcome has one, the
    Kubernetes rollout plan has none (its text is printed)."""
    outcome = tfstack.rollout.Outcome(
        Journal(
            project="p",
            model="m",
            action="rollout",
            version=2,
            original=ModelState({"latest": 1}, {}),
            original_spec_text="",
            original_served=(1,),
            previous_stable=1,
            steps=[],
        ),
        {},
        "m version 2 is stable",
    )
    assert isinstance(outcome, Documented)
    assert outcome.describe() == ["m version 2 is stable"]
    assert replace(outcome, dry_run=True).describe() == []
    assert issubclass(KubernetesRollout, Described)
    assert not issubclass(KubernetesRollout, Documented)


def test_kubernetes_render_says_it_is_not_deployed(
    calls: list[Call], capsys: pytest.CaptureFixture[str]
) -> None:
    """After a real Kubernetes render the task says how to apply it; a dry run does not."""
    tasks.render(MockContext(), target="kubernetes")
    assert capsys.readouterr().out.endswith(
        "everything up to date\nrendered and validated, not deployed: "
        "kubectl apply -k deploy/kubernetes\n"
    )
    tasks.render(MockContext(), target="kubernetes", dry_run=True)
    assert capsys.readouterr().out == "dry run: nothing written\n"


def test_swarm_rollout_task_passes_the_options_through(calls: list[Call]) -> None:
    """rollout --target swarm builds the same request as compose and hands it to swarm_rollout."""
    tasks.rollout(MockContext(), target="swarm", model="m", version=2, source="/c", drain=5.0)
    name, (context, request), kwargs = calls[0]
    assert name == "swarm_rollout" and context.model == "m"
    assert (request.version, request.source, request.drain_s) == (2, "/c", 5.0)
    assert kwargs == {"dry_run": False, "resume": False, "abort": False}
