"""One Docker build, streamed: the engine's (legacy) builder through the docker SDK's low-level API.

:func:`stream_build` starts the build, shows a live status line (image, seconds, current step),
records every line of output, prints each step when it ends with its outcome (``[cached]`` or how
long it ran), and returns the image id. An ``error`` event, a :class:`docker.errors.DockerException`
or a stream that ends without an image id becomes a :class:`~tfstack.errors.BuildError` carrying
the log tail and a hint from the caller. Callers may add line handlers, which see every line and can
set the status line's detail or add notes printed under the step they belong to.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
from rich.console import Console
from rich.live import Live
from rich.text import Text

from tfstack.errors import BuildError

LOG_TAIL_LINES = 25
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
STEP_LINE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
# Steps the legacy builder never reports as cached because there is nothing to cache.
NEVER_CACHED = frozenset({"FROM", "ARG"})
_USING_CACHE = "---> Using cache"

# A hint for a failed step: fixed text, or computed from the build log so far.
StepHint = str | Callable[[Sequence[str]], str | None]


@dataclass(frozen=True)
class StepOutcome:
    """One finished Dockerfile step: its line, whether the layer cache served it, its duration."""

    text: str  # "Step 3/9 : RUN ...", whitespace normalised
    cached: bool
    seconds: float
    notes: tuple[str, ...] = ()  # lines handlers picked out to print under the step

    @property
    def instruction(self) -> str:
        match = STEP_LINE.match(self.text)
        return match.group(3).split(maxsplit=1)[0].upper() if match else ""

    @property
    def rebuilt(self) -> bool:
        """The step ran instead of hitting the cache (FROM and ARG never count)."""
        return not self.cached and self.instruction not in NEVER_CACHED

    def describe(self) -> str:
        if self.cached:
            outcome = "cached"
        elif self.instruction in NEVER_CACHED:
            outcome = ""
        else:
            outcome = f"{self.seconds:.1f}s"
        suffix = f"  [{outcome}]" if outcome else ""
        return f"  {self.text[:110]}{suffix}"


@dataclass
class BuildProgress:
    """What a build has done so far; renders as the live status line."""

    image: str
    started: float = field(default_factory=time.monotonic)
    step: str = "sending build context"
    detail: str = ""  # e.g. Bazel's "[1,234 / 5,678] ..." progress, set by a line handler
    steps: int = 0  # the total the builder announces ("Step i/N")
    log: list[str] = field(default_factory=list)
    outcomes: list[StepOutcome] = field(default_factory=list)
    _step_started: float = field(default_factory=time.monotonic, repr=False)
    _step_cached: bool = field(default=False, repr=False)
    _notes: list[str] = field(default_factory=list, repr=False)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def cached_steps(self) -> int:
        return sum(outcome.cached for outcome in self.outcomes)

    @property
    def rebuilt(self) -> tuple[str, ...]:
        return tuple(outcome.text for outcome in self.outcomes if outcome.rebuilt)

    def note(self, line: str) -> None:
        """Print ``line`` under the current step once that step ends."""
        self._notes.append(line)

    def __rich__(self) -> Text:
        text = f"building {self.image}  {self.elapsed():5.0f}s  "
        text += f"{self.step[:70]}  {self.detail[:70]}" if self.detail else self.step[:100]
        return Text(text, style="cyan")

    def finish_step(self, console: Console) -> None:
        """Record and print the step that just ended (nothing before the first step)."""
        if STEP_LINE.match(self.step):
            outcome = StepOutcome(
                self.step,
                self._step_cached,
                time.monotonic() - self._step_started,
                tuple(self._notes),
            )
            self.outcomes.append(outcome)
            console.print(outcome.describe(), highlight=False, markup=False, soft_wrap=True)
            for note in outcome.notes:
                console.print(f"    {note}", highlight=False, markup=False, soft_wrap=True)
        self._notes = []

    def start_step(self, line: str, total: int) -> None:
        self.step = " ".join(line.split())
        self.detail = ""
        self.steps = total
        self._step_started = time.monotonic()
        self._step_cached = False

    def mark_cached(self) -> None:
        self._step_cached = True


# Sees every line of build output; may set ``progress.detail`` or call ``progress.note``.
LineHandler = Callable[[str, BuildProgress], None]


def _hint(hint: StepHint | None, log: Sequence[str]) -> str | None:
    return hint(log) if callable(hint) else hint


def follow(
    events: Iterable[dict[str, Any]],
    progress: BuildProgress,
    console: Console,
    *,
    handlers: Sequence[LineHandler] = (),
    step_hint: StepHint | None = None,
) -> str:
    """Consume a decoded build event stream; returns the image id, raises BuildError."""
    image_id: str | None = None
    for event in events:
        if "error" in event:
            raise BuildError(
                f"{progress.step}: {str(event['error']).strip()}",
                image=progress.image,
                log_tail=progress.log[-LOG_TAIL_LINES:],
                hint=_hint(step_hint, progress.log),
            )
        aux = event.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            image_id = str(aux["ID"])
        for raw in str(event.get("stream", "")).splitlines():
            line = ANSI_ESCAPE.sub("", raw).rstrip()
            if not line:
                continue
            progress.log.append(line)
            match = STEP_LINE.match(line)
            if match:
                progress.finish_step(console)
                progress.start_step(line, int(match.group(2)))
                continue
            if line.strip() == _USING_CACHE:
                progress.mark_cached()
            elif line.startswith("Successfully built "):
                image_id = image_id or line.split()[-1]
            for handler in handlers:
                handler(line, progress)
    progress.finish_step(console)
    if image_id is None:
        raise BuildError(
            "the build ended without an image id",
            image=progress.image,
            log_tail=progress.log[-LOG_TAIL_LINES:],
        )
    return image_id


def stream_build(
    client: docker.DockerClient,
    progress: BuildProgress,
    *,
    console: Console,
    handlers: Sequence[LineHandler] = (),
    step_hint: StepHint | None = None,
    engine_hint: str | None = None,
    **options: Any,
) -> str:
    """Build ``progress.image`` with ``client.api.build(**options)``; returns the image id.

    The build never pulls, always removes intermediate containers, and is tagged
    ``progress.image``; ``options`` carry the rest (context, dockerfile, args, labels, network).
    """
    try:
        with Live(progress, console=console, refresh_per_second=4, transient=True):
            events = client.api.build(
                tag=progress.image, rm=True, forcerm=True, pull=False, decode=True, **options
            )
            return follow(events, progress, console, handlers=handlers, step_hint=step_hint)
    except docker.errors.DockerException as exc:
        raise BuildError(
            f"the engine refused the build: {exc}",
            image=progress.image,
            log_tail=progress.log[-LOG_TAIL_LINES:],
            hint=engine_hint,
        ) from exc
