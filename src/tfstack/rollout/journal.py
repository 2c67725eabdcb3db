"""The rollout journal: what a rollout planned, how far it got, and how to undo it.

One JSON file per model, ``state/rollouts/<project>/<model>.json`` under the project root, written
atomically (:func:`tfstack.core.files.write_files_atomically`) before and after every step. It
holds the serialized plan, each step's status, the spec text and model state from before the
rollout (so an abort can put them back byte for byte), whether tfstack created the version directory
(so only that one is ever removed) and a short history of finished rollouts (so ``invoke rollback``
knows
the previous version).

A journal whose status is ``running`` but whose process is gone is *interrupted*: ``invoke rollout
--resume`` re-runs its first unfinished step onwards (every step is idempotent), ``--abort``
restores the state from before. ``invoke status`` shows journals that are not finished.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tfstack.core.files import write_files_atomically
from tfstack.errors import RolloutError

JOURNAL_FORMAT = 1
JOURNAL_DIR = "state/rollouts"
HISTORY_LIMIT = 20

Action = Literal["rollout", "promote", "rollback"]
Status = Literal["running", "failed", "restore_failed", "aborted", "done", "canary"]
StepStatus = Literal["pending", "running", "done", "failed", "skipped"]
UNFINISHED: tuple[str, ...] = ("running", "restore_failed", "canary")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ModelState:
    """The part of a model's spec a rollout changes: its version policy and its labels.

    ``policy`` uses the spec's spelling: ``{"specific": [1, 2]}``, ``{"latest": 1}`` or
    ``{"all": True}``.
    """

    policy: Mapping[str, Any]
    labels: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def pinned(cls, versions: Sequence[int], labels: Mapping[str, int]) -> ModelState:
        return cls({"specific": sorted(set(versions))}, dict(sorted(labels.items())))

    @property
    def specific(self) -> tuple[int, ...] | None:
        """The pinned versions, or None for a latest/all policy."""
        versions = self.policy.get("specific")
        return None if versions is None else tuple(int(v) for v in versions)

    def describe(self) -> str:
        if "specific" in self.policy:
            policy = "specific [" + ", ".join(str(v) for v in self.specific or ()) + "]"
        elif "all" in self.policy:
            policy = "all"
        else:
            policy = f"latest {self.policy.get('latest', 1)}"
        labels = ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"{policy}; labels {labels or 'none'}"

    def to_json(self) -> dict[str, Any]:
        policy = dict(self.policy)
        if "specific" in policy:
            policy["specific"] = list(self.specific or ())
        return {"policy": policy, "labels": dict(self.labels)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelState:
        return cls(dict(data["policy"]), {str(k): int(v) for k, v in data["labels"].items()})


@dataclass(frozen=True)
class Step:
    """One step of a rollout plan, as data (printed for ``--dry-run``, stored in the journal).

    ``kind`` says what :class:`tfstack.rollout.run.Runner` does:

    - ``transition``: edit the spec to ``target`` (or put back the original text with
      ``restore_original``), render models.config, reload every serving replica in turn and wait
      until ``wait_available`` are AVAILABLE there (after ``drain_s`` seconds of drain);
    - ``stage``: copy ``source`` (or export a Keras file) beside the model's versions under a
      dot-name, check it, compare its signatures with version ``compare_with``, rename it to
      ``version``;
    - ``verify``: a side instance serving ``compare_with`` and ``version`` runs the samples;
    - ``remove_version``: remove the version directory tfstack created (and staging leftovers);
    - ``canary_start``: start the canary replica serving ``version`` only (weighted canaries,
      :mod:`tfstack.rollout.canary`) and wait until it is AVAILABLE and in the door's rotation;
    - ``traffic``: the door sends ``percent`` % of the model's unversioned requests to the canary;
      the gates judge windows of ``analysis_s`` seconds (0: the spec's ``slo.window_seconds``);
    - ``canary_stop``: the door's share back to 0, then the canary replica drained and removed.
    """

    name: str
    kind: Literal[
        "transition", "stage", "verify", "remove_version", "canary_start", "traffic", "canary_stop"
    ]
    description: str
    target: ModelState | None = None
    wait_available: tuple[int, ...] = ()
    drain_s: float = 0.0
    restore_original: bool = False
    version: int | None = None
    compare_with: int | None = None
    source: str | None = None
    allow_signature_change: bool = False
    latency_factor: float = 2.0
    percent: int = 0
    analysis_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = self.target.to_json() if self.target is not None else None
        data["wait_available"] = list(self.wait_available)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        values = dict(data)
        target = values.get("target")
        values["target"] = ModelState.from_json(target) if target is not None else None
        values["wait_available"] = tuple(values.get("wait_available", ()))
        return cls(**values)


@dataclass
class StepRecord:
    step: Step
    status: StepStatus = "pending"
    detail: str = ""
    started_at: str | None = None
    finished_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step.to_json(),
            "status": self.status,
            "detail": self.detail,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepRecord:
        return cls(
            Step.from_json(data["step"]),
            data.get("status", "pending"),
            data.get("detail", ""),
            data.get("started_at"),
            data.get("finished_at"),
        )


@dataclass
class Journal:
    """One model's rollout (or promote, rollback) and everything needed to resume or undo it."""

    project: str
    model: str
    action: Action
    version: int | None
    original: ModelState
    original_spec_text: str
    original_served: tuple[int, ...]
    previous_stable: int | None
    steps: list[StepRecord]
    status: Status = "running"
    created_version_dir: bool = False
    pid: int = field(default_factory=os.getpid)
    started_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    # -- queries ---------------------------------------------------------------------------

    def record(self, name: str) -> StepRecord | None:
        for record in self.steps:
            if record.step.name == name:
                return record
        return None

    def started(self, name: str) -> bool:
        """Whether step ``name`` ran at least partly (so its effects may exist)."""
        record = self.record(name)
        return record is not None and record.status in ("running", "done", "failed")

    @property
    def next_index(self) -> int:
        """Index of the first step not done (len(steps) when everything is done)."""
        for index, record in enumerate(self.steps):
            if record.status not in ("done", "skipped"):
                return index
        return len(self.steps)

    def process_alive(self) -> bool:
        return _pid_alive(self.pid)

    @property
    def interrupted(self) -> bool:
        return self.status == "running" and not self.process_alive()

    def summary(self) -> dict[str, Any]:
        """What ``invoke status`` shows for an unfinished journal."""
        current = next(
            (r for r in self.steps if r.status in ("running", "failed")),
            self.steps[self.next_index] if self.next_index < len(self.steps) else None,
        )
        state = "interrupted" if self.interrupted else self.status
        hint = {
            "interrupted": f"invoke rollout --model {self.model} --resume (or --abort)",
            "running": f"in progress (pid {self.pid})",
            "restore_failed": f"invoke rollout --model {self.model} --abort",
            "canary": f"invoke rollout --model {self.model} --promote (or invoke rollback "
            f"--model {self.model})",
        }.get(state, "")
        return {
            "model": self.model,
            "action": self.action,
            "version": self.version,
            "state": state,
            "step": current.step.name if current is not None else None,
            "traffic": self.traffic_share(),
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "error": self.error,
            "next": hint,
        }

    def traffic_share(self) -> dict[str, int] | None:
        """A weighted canary's current split (``{"version": N, "percent": p}``), or None when
        the rollout has none running (never started, stopped, failed or finished)."""
        if self.status not in ("running",) or self.started("canary_stop"):
            return None
        percent = None
        for record in self.steps:
            if record.step.kind == "traffic" and record.status in ("running", "done"):
                percent = record.step.percent
        if percent is None or self.version is None:
            return None
        return {"version": self.version, "percent": percent}

    # -- serialization -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": JOURNAL_FORMAT,
            "project": self.project,
            "model": self.model,
            "action": self.action,
            "version": self.version,
            "status": self.status,
            "pid": self.pid,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "error": self.error,
            "original": self.original.to_json(),
            "original_spec_text": self.original_spec_text,
            "original_served": list(self.original_served),
            "previous_stable": self.previous_stable,
            "created_version_dir": self.created_version_dir,
            "steps": [record.to_json() for record in self.steps],
            "history": list(self.history)[-HISTORY_LIMIT:],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Journal:
        if data.get("format") != JOURNAL_FORMAT:
            raise ValueError(f"unknown journal format {data.get('format')!r}")
        return cls(
            project=str(data["project"]),
            model=str(data["model"]),
            action=data["action"],
            version=data.get("version"),
            original=ModelState.from_json(data["original"]),
            original_spec_text=str(data["original_spec_text"]),
            original_served=tuple(data.get("original_served", ())),
            previous_stable=data.get("previous_stable"),
            steps=[StepRecord.from_json(item) for item in data.get("steps", [])],
            status=data["status"],
            created_version_dir=bool(data.get("created_version_dir", False)),
            pid=int(data.get("pid", 0)),
            started_at=str(data.get("started_at", "")),
            updated_at=str(data.get("updated_at", "")),
            error=data.get("error"),
            history=list(data.get("history", [])),
        )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) is not running any more.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


# --------------------------------------------------------------------------------------------
# Files


def journal_relpath(project: str, model: str) -> str:
    return f"{JOURNAL_DIR}/{project}/{model}.json"


def journal_path(root: Path, project: str, model: str) -> Path:
    return root / journal_relpath(project, model)


def read_journal(root: Path, project: str, model: str) -> Journal | None:
    """The model's journal, or None; a damaged file is a RolloutError saying where it is."""
    path = journal_path(root, project, model)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return Journal.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise RolloutError(
            f"the rollout journal {path} is damaged: {exc}",
            model=model,
            hint="inspect it; move it away to start over (check `invoke status` first)",
        ) from exc


def write_journal(root: Path, journal: Journal) -> None:
    """Write the journal atomically (updated_at refreshed)."""
    journal.updated_at = now_iso()
    text = json.dumps(journal.to_json(), indent=2, sort_keys=True) + "\n"
    write_files_atomically(root, {journal_relpath(journal.project, journal.model): text})


def unfinished(root: Path, project: str) -> list[Journal]:
    """Journals of the project that are running, interrupted, canary or failed to restore."""
    directory = root / JOURNAL_DIR / project
    if not directory.is_dir():
        return []
    found: list[Journal] = []
    for path in sorted(directory.glob("*.json")):
        try:
            journal = Journal.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if journal.status in UNFINISHED:
            found.append(journal)
    return found


def status_summary(root: Path, project: str) -> dict[str, Any] | None:
    """``StackStatus.rollout`` for ``invoke status``: unfinished rollouts by model, or None."""
    journals = unfinished(root, project)
    if not journals:
        return None
    return {journal.model: journal.summary() for journal in journals}
