"""One exception root for tfstack; subclasses carry the context a user needs at 3 a.m.

Tasks turn these into messages and exit codes at the edge (``tasks.py``); library code raises them
with enough context (file, YAML path, service, model, version) that the message alone says what is
wrong, where, and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class TfstackError(Exception):
    """Root of every error tfstack reports to a user.

    ``exit_code`` is what the task layer exits with: 2 for bad input (spec, flags), 1 for failures
    of the machinery (engine, build, stack, rollout).
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


@dataclass(frozen=True)
class SpecProblem:
    """One problem found in a stack spec: where it is and what is wrong."""

    file: str
    yaml_path: str  # e.g. "models[2].labels.canary"; "" for the document itself
    message: str
    line: int | None = None  # 1-based, when the YAML node is known
    hint: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.yaml_path:
            where += f": {self.yaml_path}"
        text = f"{where}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class SpecError(TfstackError):
    """The stack spec is invalid; carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: Sequence[SpecProblem]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        header = f"invalid stack spec: {count} problem{'s' if count != 1 else ''}"
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{header}\n{body}" if body else header)


class UsageError(TfstackError):
    """A task was called with options that do not make sense together."""

    exit_code = 2


class RenderError(TfstackError):
    """A template failed to render or its output failed validation; nothing was written."""

    def __init__(
        self,
        message: str,
        *,
        template: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = ""
        if template:
            where = f"{template}:{line}: " if line else f"{template}: "
        super().__init__(f"{where}{message}", hint=hint)
        self.template = template
        self.line = line


class WriteError(TfstackError):
    """Writing files to disk failed; the files named keep their previous content."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint=hint)
        self.path = path


class EngineError(TfstackError):
    """No usable Docker engine or Compose plugin."""


class BuildError(TfstackError):
    """An image build failed; carries the step and the tail of the build log."""

    def __init__(
        self,
        message: str,
        *,
        image: str | None = None,
        log_tail: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        text = f"{image}: {message}" if image else message
        if log_tail:
            text += "\n  last build output:\n" + "\n".join(f"    {line}" for line in log_tail)
        super().__init__(text, hint=hint)
        self.image = image
        self.log_tail = list(log_tail)


class StackError(TfstackError):
    """Starting, waiting for or talking to a running stack failed."""

    def __init__(
        self,
        message: str,
        *,
        service: str | None = None,
        log_tail: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        text = f"service {service}: {message}" if service else message
        if log_tail:
            text += "\n  last server log lines:\n" + "\n".join(f"    {line}" for line in log_tail)
        super().__init__(text, hint=hint)
        self.service = service
        self.log_tail = list(log_tail)


@dataclass
class CommandFailed(TfstackError):
    """An external command (docker compose, apt-get, ...) exited non-zero."""

    argv: Sequence[str]
    returncode: int
    stderr_tail: Sequence[str] = field(default_factory=list)
    hint_text: str | None = None

    def __post_init__(self) -> None:
        text = f"command failed (exit {self.returncode}): {' '.join(self.argv)}"
        if self.stderr_tail:
            text += "\n" + "\n".join(f"    {line}" for line in self.stderr_tail)
        TfstackError.__init__(self, text, hint=self.hint_text)


class RolloutError(TfstackError):
    """A rollout step failed; the previous version keeps serving."""

    def __init__(
        self,
        message: str,
        *,
        model: str,
        version: int | None = None,
        step: str | None = None,
        evidence: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        where = f"model {model}" + (f" version {version}" if version is not None else "")
        if step:
            where += f", step {step}"
        text = f"{where}: {message}"
        if evidence:
            text += "\n" + "\n".join(f"    {line}" for line in evidence)
        super().__init__(text, hint=hint)
        self.model = model
        self.version = version
        self.step = step
        self.evidence = list(evidence)
