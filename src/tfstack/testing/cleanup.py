"""Removing the kit's containers by label: this session's, and those of runs that crashed.

testcontainers' reaper (Ryuk) needs a registry image, so the kit cleans up itself: every container
carries ``org.tfstack.session`` and ``org.tfstack.testkit.owner=<host>:<pid>``; at the end of a
session its containers go, and before the first container of a session starts, containers whose
owner process on this host is gone (a crashed or killed run) go too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from typing import Any

import docker.errors

from tfstack.core.labels import LABEL_SESSION

LABEL_TESTKIT = "org.tfstack.testkit"
LABEL_OWNER = "org.tfstack.testkit.owner"  # "<host>:<pid>" of the process that started it
SESSION_ID = uuid.uuid4().hex
"""This process's test session: every kit container carries it as ``org.tfstack.session``."""


def session_labels() -> dict[str, str]:
    """The labels that let the kit remove its containers, even those a crashed run left."""
    return {
        LABEL_TESTKIT: "true",
        LABEL_SESSION: SESSION_ID,
        LABEL_OWNER: f"{socket.gethostname()}:{os.getpid()}",
    }


def owner_alive(owner: str, host: str | None = None) -> bool:
    """Whether ``<host>:<pid>`` names a running process (other hosts' owners count as alive)."""
    owner_host, _, pid_text = owner.rpartition(":")
    if owner_host != (host or socket.gethostname()) or not pid_text.isdigit():
        return True
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(containers: list[Any]) -> list[str]:
    removed = []
    for container in containers:
        with contextlib.suppress(docker.errors.NotFound):  # gone already: the goal
            container.remove(force=True)
            removed.append(str(container.name))
    return removed


def remove_session(client: Any, session: str) -> list[str]:
    """Remove every kit container of ``session``; their names."""
    selector = {"label": [f"{LABEL_TESTKIT}=true", f"{LABEL_SESSION}={session}"]}
    return _remove(client.containers.list(all=True, filters=selector))


def remove_stale(client: Any) -> list[str]:
    """Remove kit containers whose owner process on this host no longer runs; their names."""
    containers = client.containers.list(all=True, filters={"label": [f"{LABEL_TESTKIT}=true"]})
    stale = [c for c in containers if not owner_alive(c.labels.get(LABEL_OWNER, ""))]
    return _remove(stale)
