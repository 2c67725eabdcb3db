"""A rendered config file checked by its own tool inside the image that will read it.

:func:`check_config_in_image` writes the file alone into a private directory, runs the command a
:class:`ConfigCheck`'s caller builds for it (``docker run`` with the directory mounted read-only,
no network) and turns a refusal or a timeout into :class:`~tfstack.errors.RenderError` naming the
rendered file. The door's ``haproxy -c`` and Prometheus's ``promtool check config`` are the two.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tfstack.errors import RenderError


@dataclass(frozen=True)
class ConfigCheck:
    """What one check is called and says: its file, its tool, its messages."""

    config: str  # the rendered file's path among the rendered files (also the error's template)
    filename: str  # its name in the mounted directory
    tool: str  # the check's command as the timeout message names it, e.g. "haproxy -c"
    what: str  # "the door's HAProxy config": "cannot check <what>: image ... is missing"
    missing_hint: str  # how to get the image when a required check cannot run
    refusal: str  # "HAProxy refuses the rendered door config": prefix of the tool's own words
    refusal_hint: str
    tmp_prefix: str
    timeout_s: int
    companions: tuple[tuple[str, str], ...] = ()  # (rendered path, name) written beside it


def check_run_command(
    docker: str,
    config_dir: Path,
    container_dir: str,
    *,
    tmpfs: str | None = None,
    user: str | None = None,
) -> list[str]:
    """The start of a check's ``docker run``: no network, read-only root, no capabilities, the
    rendered directory mounted read-only at ``container_dir``; the caller adds image and tool."""
    command = [docker, "run", "--rm", "--network", "none", "--read-only"]
    if tmpfs is not None:
        command += ["--tmpfs", tmpfs]
    command += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges:true"]
    if user is not None:
        command += ["--user", user]
    return [
        *command,
        "--label",
        "org.tfstack.managed=true",
        "-v",
        f"{config_dir}:{container_dir}:ro",
    ]


def image_present(docker: str, image: str) -> bool:
    result = subprocess.run(
        [docker, "image", "inspect", "--format", "{{.Id}}", image],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return result.returncode == 0


def check_config_in_image(
    check: ConfigCheck,
    files: Mapping[str, str],
    image: str,
    command: Callable[[str, Path], list[str]],
    *,
    required: bool | None = None,
) -> bool:
    """Run ``command(docker, config_dir)`` on the rendered ``check.config``; False when it could
    not run (not rendered, no image, no docker CLI).

    ``required``: True raises when the check cannot run; None runs it when the image is present.
    Raises RenderError with the tool's own message when the config is refused.
    """
    if check.config not in files:
        return False
    docker = shutil.which("docker")
    if docker is None or not image_present(docker, image):
        if required:
            raise RenderError(
                f"cannot check {check.what}: image {image} is missing",
                template=check.config,
                hint=check.missing_hint,
            )
        return False
    with tempfile.TemporaryDirectory(prefix=check.tmp_prefix) as tmp:
        config_dir = Path(tmp)
        config_dir.chmod(0o755)
        config = config_dir / check.filename
        config.write_text(files[check.config], encoding="utf-8")
        config.chmod(0o644)
        for rendered, name in check.companions:
            if rendered in files:
                (config_dir / name).write_text(files[rendered], encoding="utf-8")
                (config_dir / name).chmod(0o644)
        try:
            result = subprocess.run(
                command(docker, config_dir),
                capture_output=True,
                text=True,
                check=False,
                timeout=check.timeout_s,
            )
        except subprocess.TimeoutExpired as exc:
            raise RenderError(
                f"{check.tool} did not finish within {check.timeout_s} s",
                template=check.config,
            ) from exc
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        raise RenderError(
            f"{check.refusal}: {message[-2000:]}",
            template=check.config,
            hint=check.refusal_hint,
        )
    return True
