"""kubectl for offline checks: find it, install Debian's ``kubernetes-client`` when it is missing,
and build the Kustomize base with ``kubectl kustomize`` (no cluster needed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from tfstack.core.progress import Say
from tfstack.errors import CommandFailed, RenderError, TfstackError

DEBIAN_PACKAGE = "kubernetes-client"
KUSTOMIZE_TIMEOUT_SECONDS = 120

Run = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


class KubectlMissing(TfstackError):
    """kubectl is not installed and cannot be installed here."""


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=900)


def _is_debian() -> bool:
    return Path("/etc/debian_version").is_file()


def _is_root() -> bool:
    return os.geteuid() == 0


def ensure_kubectl(
    say: Say,
    *,
    run: Run = _run,
    which: Callable[[str], str | None] = shutil.which,
    is_root: Callable[[], bool] = _is_root,
    is_debian: Callable[[], bool] = _is_debian,
) -> str:
    """The path of kubectl, installing Debian's kubernetes-client first when root on Debian."""
    found = which("kubectl")
    if found is not None:
        return found
    if not (is_root() and is_debian()):
        raise KubectlMissing(
            "kubectl is not installed; the Kubernetes manifests cannot be checked with "
            "`kubectl kustomize`",
            hint=f"install it (Debian: `sudo apt-get install -y {DEBIAN_PACKAGE}`) and run again",
        )
    env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
    for argv in (
        [*env_prefix, "apt-get", "update"],
        [*env_prefix, "apt-get", "install", "-y", "--no-install-recommends", DEBIAN_PACKAGE],
    ):
        say("running: " + " ".join(argv[len(env_prefix) :]))
        result = run(argv)
        if result.returncode != 0:
            raise CommandFailed(
                argv,
                result.returncode,
                stderr_tail=(result.stderr or "").strip().splitlines()[-10:],
                hint_text=f"install {DEBIAN_PACKAGE} by hand and run again",
            )
    found = which("kubectl")
    if found is None:
        raise KubectlMissing(
            f"{DEBIAN_PACKAGE} installed but kubectl is not on PATH",
            hint="check `dpkg -L kubernetes-client` and PATH",
        )
    say(f"installed {DEBIAN_PACKAGE}: {found}")
    return found


def kustomize_build(directory: Path, kubectl: str, *, run: Run = _run) -> str:
    """``kubectl kustomize <directory>``: the built YAML stream, or RenderError with its words."""
    argv = [kubectl, "kustomize", str(directory)]
    try:
        result = run(argv)
    except subprocess.TimeoutExpired as exc:
        raise RenderError(
            f"kubectl kustomize did not finish within {KUSTOMIZE_TIMEOUT_SECONDS} s",
            template=str(directory),
        ) from exc
    if result.returncode != 0:
        raise RenderError(
            f"kubectl kustomize rejects the rendered base: {(result.stderr or '').strip()}",
            template=str(directory),
            hint="this is a bug in tfstack's Kubernetes manifests; please report it with your spec",
        )
    return result.stdout
