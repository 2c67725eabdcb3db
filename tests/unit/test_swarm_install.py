"""The models service's install script (render.swarm.install_script), run with ``sh`` on temp
directories: what a node's volume holds after each model image (no Docker)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.unit.test_swarm_golden import _render
from tfstack.build.modelimage import ModelFile, version_manifest
from tfstack.render.swarm import LABEL_REVISION, install_script


def _image(tmp: Path, versions: dict[str, bytes]) -> Path:
    """A model image's /tfstack-models: one file per version dir, the manifest, the config."""
    image = tmp / "image"
    files: list[ModelFile] = []
    for version_dir, content in versions.items():
        path = image / "repository" / version_dir / "saved_model.pb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        files.append(ModelFile(f"{version_dir}/saved_model.pb", path, version_dir))
    (image / "versions.txt").write_text(version_manifest(files), encoding="utf-8")
    (image / "models.config").write_text(f"config for {sorted(versions)}\n", encoding="utf-8")
    return image


def _install(image: Path, root: Path, revision: str) -> None:
    script = install_script(revision, image_dir=str(image), root=str(root))
    subprocess.run(["sh", "-c", script], check=True, capture_output=True, timeout=30)


def test_versions_and_config_arrive(tmp_path: Path) -> None:
    image = _image(tmp_path / "a", {"m/1": b"one", "nested/n/00000123": b"n"})
    root = tmp_path / "volume"
    _install(image, root, "rev1")
    assert (root / "m/1/saved_model.pb").read_bytes() == b"one"
    assert (root / "nested/n/00000123/saved_model.pb").read_bytes() == b"n"
    assert (
        root / ".tfstack/models.config"
    ).read_text() == "config for ['m/1', 'nested/n/00000123']\n"
    assert (root / ".tfstack/revision").read_text() == "rev1\n"
    assert not list(root.rglob(".incoming-*")) and not list(root.rglob(".replaced-*"))


def test_an_unchanged_version_is_left_alone_and_a_reused_number_is_replaced(tmp_path: Path) -> None:
    """Version 2 aborted on the nodes, then rolled out again with other bytes: the node gets the
    new bytes (``cp -n`` kept the old ones); version 1, unchanged, is not copied again."""
    root = tmp_path / "volume"
    _install(_image(tmp_path / "a", {"m/1": b"one", "m/2": b"bad"}), root, "rev1")
    kept = (root / "m/1/saved_model.pb").stat().st_ino
    _install(_image(tmp_path / "b", {"m/1": b"one", "m/2": b"fixed"}), root, "rev2")
    assert (root / "m/2/saved_model.pb").read_bytes() == b"fixed"
    assert (root / "m/1/saved_model.pb").stat().st_ino == kept
    assert (root / ".tfstack/revision").read_text() == "rev2\n"


def test_a_volume_filled_before_the_manifest_is_brought_in_line(tmp_path: Path) -> None:
    root = tmp_path / "volume"
    (root / "m/1").mkdir(parents=True)
    (root / "m/1/saved_model.pb").write_bytes(b"stale")
    _install(_image(tmp_path / "a", {"m/1": b"one"}), root, "rev1")
    assert (root / "m/1/saved_model.pb").read_bytes() == b"one"


def test_the_stack_file_escapes_the_script_for_stack_deploy() -> None:
    """`docker stack deploy` interpolates $name: every $ of the script reaches sh as $$ -> $."""
    stack = yaml.safe_load(_render("demo")["compose/stack.yml"])
    revision = stack["services"]["models"]["labels"][LABEL_REVISION]
    script = install_script(revision)
    assert "$dir" in script
    entry = stack["services"]["models"]["entrypoint"][2]
    assert entry.replace("$$", "$") == script + "exec sleep infinity\n"
    assert "$dir" not in entry.replace("$$", "")
