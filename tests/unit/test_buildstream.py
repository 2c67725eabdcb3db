"""Streaming one Docker build: recorded event streams replayed through a fake client (no Docker)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from typing import Any

import docker.errors
import pytest
from rich.console import Console

from tfstack.build import optimized
from tfstack.build.buildstream import BuildProgress, StepOutcome, stream_build
from tfstack.errors import BuildError

IMAGE_ID = "sha256:" + "e" * 64


class FakeAPI:
    """``client.api.build`` replaying recorded events, or refusing like the engine does."""

    def __init__(self, events: Sequence[dict[str, Any]], refuse: Exception | None = None) -> None:
        self.events = events
        self.refuse = refuse
        self.build_kwargs: dict[str, Any] = {}

    def build(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.build_kwargs = kwargs
        if self.refuse is not None:
            raise self.refuse
        return iter(self.events)


class FakeClient:
    def __init__(self, events: Sequence[dict[str, Any]], refuse: Exception | None = None) -> None:
        self.api = FakeAPI(events, refuse)


def run(
    events: Sequence[dict[str, Any]], **kwargs: Any
) -> tuple[str, BuildProgress, str, FakeClient]:
    output = io.StringIO()
    console = Console(file=output, force_terminal=False, width=200)
    client = FakeClient(events)
    progress = BuildProgress("img:1")
    image_id = stream_build(client, progress, console=console, **kwargs)  # type: ignore[arg-type]
    return image_id, progress, output.getvalue(), client


MIXED_EVENTS: list[dict[str, Any]] = [
    {"stream": "Step 1/4 : ARG BASE=debian\n"},
    {"stream": "Step 2/4 : FROM ${BASE}\n ---> bd03ab6b15c9\n"},
    {"stream": "Step 3/4 : COPY a   /a\n"},
    {"stream": " ---> Using cache\n ---> 1924bb068009\n"},
    {"stream": "Step 4/4 : RUN make\n ---> Running in 3d4abf9103a9\n"},
    {"stream": "\x1b[32mbuilt\x1b[0m\n ---> 5e6f7a8b9c0d\n"},
    {"aux": {"ID": IMAGE_ID}},
    {"stream": "Successfully built 5e6f7a8b9c0d\n"},
]


def test_cached_and_rebuilt_steps_are_counted_and_printed_with_their_outcome() -> None:
    """Every step gets an outcome: cached, how long it ran, or none for FROM/ARG (which never
    count as rebuilt); the image id comes from the aux event and the build never pulls."""
    image_id, progress, printed, client = run(MIXED_EVENTS)
    assert image_id == IMAGE_ID
    assert progress.steps == 4
    assert progress.cached_steps == 1
    assert progress.rebuilt == ("Step 4/4 : RUN make",)
    assert [o.cached for o in progress.outcomes] == [False, False, True, False]
    assert "  Step 3/4 : COPY a /a  [cached]\n" in printed
    assert re.search(r"  Step 4/4 : RUN make  \[\d+\.\ds\]\n", printed)
    assert "  Step 2/4 : FROM ${BASE}\n" in printed
    assert "built" in progress.log  # ANSI colour codes are stripped from the log
    kwargs = client.api.build_kwargs
    assert kwargs["tag"] == "img:1" and kwargs["pull"] is False and kwargs["decode"] is True


def test_image_id_falls_back_to_the_successfully_built_line() -> None:
    """Without an aux event the id is read from the builder's 'Successfully built' line."""
    events = [e for e in MIXED_EVENTS if "aux" not in e]
    image_id, _, _, _ = run(events)
    assert image_id == "5e6f7a8b9c0d"


def test_failing_step_raises_with_step_log_tail_and_fixed_hint() -> None:
    """An error event becomes a BuildError naming image and step, with the output's tail and the
    caller's hint; the failing step is not printed as finished."""
    events = [
        *MIXED_EVENTS[:5],
        {"stream": "make: *** [all] Error 2\n"},
        {"error": "The command '/bin/sh -c make' returned a non-zero code: 2\n"},
    ]
    output = io.StringIO()
    with pytest.raises(BuildError) as info:
        stream_build(
            FakeClient(events),  # type: ignore[arg-type]
            BuildProgress("img:1"),
            console=Console(file=output, force_terminal=False, width=200),
            step_hint="fix the Dockerfile",
        )
    text = str(info.value)
    assert text.startswith("img:1: Step 4/4 : RUN make: The command '/bin/sh -c make' returned")
    assert info.value.log_tail[-1] == "make: *** [all] Error 2"
    assert info.value.hint == "fix the Dockerfile"
    assert "Step 4/4" not in output.getvalue()


def test_computed_hint_sees_the_log() -> None:
    """A callable hint is given the build log, so it can tell causes apart."""
    events = [
        {"stream": "Step 1/1 : RUN cc\n"},
        {"stream": "out of memory\n"},
        {"error": "exit 1"},
    ]
    seen: list[str] = []

    def hint(log: Sequence[str]) -> str | None:
        seen.extend(log)
        return None

    with pytest.raises(BuildError) as info:
        run(events, step_hint=hint)
    assert seen == ["Step 1/1 : RUN cc", "out of memory"]
    assert info.value.hint is None


def optimized_build_hint(events: Sequence[dict[str, Any]]) -> str:
    """The hint of the BuildError an optimized build step raises for ``events``."""
    step = optimized.ImageStep("tfstack/tfserving:devel", "Dockerfile.devel", "FROM x\n", {}, {})
    console = Console(file=io.StringIO(), force_terminal=False)
    with pytest.raises(BuildError) as info:
        optimized._build_step(
            FakeClient(events),  # type: ignore[arg-type]
            step,
            no_cache=False,
            network_mode=None,
            console=console,
        )
    assert info.value.hint is not None
    return info.value.hint


def test_compiler_killed_by_oom_gets_the_memory_hint() -> None:
    """optimized's builds turn `Killed ... cc1plus` in the log into the lower --jobs hint, and
    other failures into the --dry-run hint."""
    step = {"stream": "Step 1/1 : RUN bazel build //x\n"}
    failed = {"error": "The command returned a non-zero code: 1"}
    killed = {"stream": "gcc: fatal error: Killed signal terminated program cc1plus\n"}
    assert "lower --jobs" in optimized_build_hint([step, killed, failed])
    other = {"stream": "ERROR: missing target\n"}
    assert "--dry-run" in optimized_build_hint([step, other, failed])


def test_stream_without_image_id_is_an_error() -> None:
    """A stream that ends without an aux id or 'Successfully built' line is a BuildError."""
    events = [{"stream": "Step 1/1 : FROM x\n ---> bd03ab6b15c9\n"}]
    with pytest.raises(BuildError, match="ended without an image id") as info:
        run(events)
    assert info.value.log_tail == ["Step 1/1 : FROM x", " ---> bd03ab6b15c9"]


def test_engine_refusal_carries_the_engine_hint() -> None:
    """A DockerException from the engine becomes a BuildError with the caller's engine hint."""
    client = FakeClient([], refuse=docker.errors.APIError("pull access denied for base"))
    with pytest.raises(BuildError) as info:
        stream_build(
            client,  # type: ignore[arg-type]
            BuildProgress("img:1"),
            console=Console(file=io.StringIO()),
            engine_hint="build the base image first",
        )
    assert "the engine refused the build: pull access denied" in str(info.value)
    assert info.value.hint == "build the base image first"


def test_line_handlers_set_the_detail_and_print_notes_under_their_step() -> None:
    """optimized's handler puts Bazel progress on the status line and prints Bazel's INFO summary
    under the step that produced it; the whole log is kept for parse_bazel_summary."""
    events: list[dict[str, Any]] = [
        {"stream": "Step 1/2 : RUN bazel build //x\n"},
        {"stream": "[1,024 / 2,048] Compiling x.cc\n"},
        {"stream": "INFO: 12 processes: 3 remote cache hit, 9 linux-sandbox.\n"},
        {"stream": "INFO: Elapsed time: 4.5s, Critical Path: 2.0s\n"},
        {"stream": " ---> 5e6f7a8b9c0d\n"},
        {"stream": "Step 2/2 : LABEL a=b\n"},
        {"aux": {"ID": IMAGE_ID}},
    ]
    details: list[str] = []

    def record_detail(line: str, progress: BuildProgress) -> None:
        details.append(progress.detail)

    _, progress, printed, _ = run(events, handlers=(optimized._show_bazel, record_detail))
    assert "[1,024 / 2,048] Compiling x.cc" in details
    lines = printed.splitlines()
    first = next(i for i, line in enumerate(lines) if "Step 1/2" in line)
    assert lines[first + 1] == "    INFO: 12 processes: 3 remote cache hit, 9 linux-sandbox."
    assert lines[first + 2] == "    INFO: Elapsed time: 4.5s, Critical Path: 2.0s"
    assert progress.outcomes[0].notes == (
        "INFO: 12 processes: 3 remote cache hit, 9 linux-sandbox.",
        "INFO: Elapsed time: 4.5s, Critical Path: 2.0s",
    )
    assert progress.outcomes[1].notes == ()
    summary = optimized.parse_bazel_summary(progress.log)
    assert summary.processes == 12 and summary.remote_cache_hits == 3


def test_progress_line_shows_elapsed_time_step_and_detail() -> None:
    """The live status line names the image, the seconds elapsed, the step and any detail."""
    progress = BuildProgress("img:1", started=0.0)
    progress.step = "Step 8/30 : RUN pip install"
    assert re.match(
        r"^building img:1 +\d+s  Step 8/30 : RUN pip install$", progress.__rich__().plain
    )
    progress.detail = "[10 / 20] Compiling"
    assert progress.__rich__().plain.endswith("Step 8/30 : RUN pip install  [10 / 20] Compiling")


def test_step_outcome_describes_itself() -> None:
    """A step's printed line carries its outcome; FROM and ARG carry none."""
    assert (
        StepOutcome("Step 1/2 : COPY a b", True, 0.1).describe()
        == "  Step 1/2 : COPY a b  [cached]"
    )
    assert StepOutcome("Step 2/2 : RUN x", False, 2.3).describe() == "  Step 2/2 : RUN x  [2.3s]"
    assert StepOutcome("Step 1/2 : FROM x", False, 0.3).describe() == "  Step 1/2 : FROM x"
    assert not StepOutcome("Step 1/2 : FROM x", False, 0.3).rebuilt
