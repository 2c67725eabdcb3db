"""Writing deploy/kubernetes/ atomically, and the kubectl helper (no real apt-get or kubectl)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.unit.kubernetes.variants import scaled
from tfstack.errors import CommandFailed, RenderError
from tfstack.kubernetes import (
    KUBERNETES_DIR,
    KubectlMissing,
    ensure_kubectl,
    kustomize_build,
    write_kubernetes,
)


def test_write_creates_then_leaves_unchanged_files_alone(tmp_path: Path) -> None:
    """A second write of the same render changes nothing."""
    manifests = scaled().render()
    first = write_kubernetes(manifests, tmp_path)
    assert sorted(first.written) == sorted(manifests.files)
    for path, text in manifests.files.items():
        assert (tmp_path / path).read_text(encoding="utf-8") == text
    second = write_kubernetes(manifests, tmp_path)
    assert second.written == [] and {c.action for c in second.changes} == {"unchanged"}


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    """--dry-run shows the plan and leaves the disk as it was."""
    report = write_kubernetes(scaled().render(), tmp_path, dry_run=True)
    assert report.written == [] and not (tmp_path / KUBERNETES_DIR).exists()
    assert "create  deploy/kubernetes/deployment.yaml" in report.text()


def test_files_no_longer_rendered_are_removed_but_hand_written_ones_kept(tmp_path: Path) -> None:
    """Turning the Ingress off deletes its generated file; a user's own file stays."""
    variant = scaled()
    write_kubernetes(variant.render(), tmp_path)
    own = tmp_path / KUBERNETES_DIR / "extra.yaml"
    own.write_text("apiVersion: v1\nkind: Namespace\n", encoding="utf-8")
    without = variant.target.model_copy(update={"ingress": None})
    manifests = type(variant)(
        variant.name, variant.spec, without, variant.spec_path, variant.root
    ).render()
    report = write_kubernetes(manifests, tmp_path)
    assert f"{KUBERNETES_DIR}/ingress.yaml" in report.written
    assert not (tmp_path / KUBERNETES_DIR / "ingress.yaml").exists()
    assert own.exists()


class FakeRun:
    """Records commands and answers each with the given exit code."""

    def __init__(self, returncode: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.returncode = returncode

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(list(argv), self.returncode, "built: yes\n", "boom\n")


def test_ensure_kubectl_uses_the_one_on_path() -> None:
    """An installed kubectl is used as is; nothing gets installed."""
    run = FakeRun()
    assert ensure_kubectl(print, run=run, which=lambda _: "/usr/bin/kubectl") == "/usr/bin/kubectl"
    assert run.calls == []


def test_ensure_kubectl_installs_debian_package_as_root() -> None:
    """Root on Debian without kubectl: apt-get installs kubernetes-client, then it is found."""
    run = FakeRun()
    found = iter([None, "/usr/bin/kubectl"])
    said: list[str] = []
    path = ensure_kubectl(
        said.append,
        run=run,
        which=lambda _: next(found),
        is_root=lambda: True,
        is_debian=lambda: True,
    )
    assert path == "/usr/bin/kubectl"
    assert run.calls[-1][-1] == "kubernetes-client" and "install" in run.calls[-1]
    assert said[-1] == "installed kubernetes-client: /usr/bin/kubectl"


def test_ensure_kubectl_explains_when_it_cannot_install() -> None:
    """Not root (or not Debian): a clear error with the install command, no apt-get."""
    run = FakeRun()
    with pytest.raises(KubectlMissing, match="apt-get install -y kubernetes-client"):
        ensure_kubectl(print, run=run, which=lambda _: None, is_root=lambda: False)
    assert run.calls == []


def test_ensure_kubectl_reports_a_failed_install() -> None:
    """apt-get failing is a CommandFailed carrying its stderr."""
    with pytest.raises(CommandFailed, match="boom"):
        ensure_kubectl(
            print,
            run=FakeRun(returncode=100),
            which=lambda _: None,
            is_root=lambda: True,
            is_debian=lambda: True,
        )


def test_kustomize_failure_is_a_render_error(tmp_path: Path) -> None:
    """kubectl kustomize rejecting the base raises RenderError with kubectl's message."""
    with pytest.raises(RenderError, match="boom"):
        kustomize_build(tmp_path, "kubectl", run=FakeRun(returncode=1))
    assert kustomize_build(tmp_path, "kubectl", run=FakeRun()) == "built: yes\n"
