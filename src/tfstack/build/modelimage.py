"""Model images for the Swarm target: the served versions and models.config, tagged by content.

No shared filesystem is assumed: every node pulls the model image from the registry and the
stack's ``models`` service copies it into the node's volume (see tfstack.render.swarm). The image
is ``FROM`` the serving image's base (or the serving image itself; :func:`model_base_image`), whose
layers every node has anyway (and which has ``sh`` and ``cp``), plus one layer of models; its tag
is the sha256 of the files it holds (paths, modes, bytes), so an unchanged repository is the same
image and a second ``up`` pushes nothing.

Pushing: the host pushes to ``push_registry`` and the nodes pull the same repository from
``registry`` (for the local cluster: 127.0.0.1:5000 and tfstack-registry:5000).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tfstack.core.versions import version_dirs
from tfstack.errors import BuildError
from tfstack.render.swarm import IMAGE_MODELS_DIR, VERSIONS_FILE
from tfstack.spec.model import StackSpecFields, model_host_dir, model_relative_path

MANAGED_LABEL = "org.tfstack.managed"
ROLE_LABEL = "org.tfstack.role"
MODEL_IMAGE_ROLE = "model-image"
MODELS_DIGEST_LABEL = "org.tfstack.models-digest"
KEEP_PREVIOUS = 1
"""Older model image tags kept on this engine after a deploy, besides the current (rollback)."""
PUSH_TIMEOUT_S = 1800
Say = Callable[[str], None]


@dataclass(frozen=True)
class ModelFile:
    """One file of the model image: where it goes (relative) and where it comes from."""

    relative: str  # under repository/ (model path/version dir/...)
    source: Path
    version_dir: str = ""  # under repository/: the version directory it belongs to


def served_files(
    spec: StackSpecFields, spec_path: Path, served: Mapping[str, Iterable[int]]
) -> list[ModelFile]:
    """Every file of every served version (``served``: model -> versions), sorted."""
    files: list[ModelFile] = []
    for model in spec.models:
        wanted = set(served.get(model.name, ()))
        base = model_host_dir(spec, spec_path, model)
        relative_base = Path(model_relative_path(model))
        if relative_base.is_absolute():
            relative_base = Path(model.name)
        for version in version_dirs(base):
            if version.version not in wanted:
                continue
            top = base / version.name
            version_dir = (relative_base / version.name).as_posix()
            for directory, _, names in os.walk(top):
                for name in names:
                    source = Path(directory) / name
                    inner = source.relative_to(base)
                    relative = (relative_base / inner).as_posix()
                    files.append(ModelFile(relative, source, version_dir))
    return sorted(files, key=lambda f: f.relative)


def _hash_file(digest: Any, item: ModelFile) -> None:
    digest.update(item.relative.encode("utf-8") + b"\0")
    digest.update(b"x" if os.access(item.source, os.X_OK) else b"-")
    with item.source.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(b"\0")


def version_manifest(files: Iterable[ModelFile]) -> str:
    """``<sha256> <version dir>`` per version directory, sorted: what the models service compares
    with what a node's volume holds, so a version number reused with other bytes (a rollout
    aborted, then retried with a fixed model) replaces the old files instead of being skipped."""
    by_version: dict[str, Any] = {}
    for item in files:
        _hash_file(by_version.setdefault(item.version_dir, hashlib.sha256()), item)
    return "".join(f"{d.hexdigest()} {v}\n" for v, d in sorted(by_version.items()))


def content_digest(files: Iterable[ModelFile], models_config: str) -> str:
    """sha256 over each file's path, executable bit and bytes, then the models.config text."""
    digest = hashlib.sha256()
    for item in files:
        _hash_file(digest, item)
    digest.update(models_config.encode("utf-8"))
    return digest.hexdigest()


def model_repository_name(project: str) -> str:
    return f"tfstack/models-{project}"


def model_image_tag(digest: str) -> str:
    """A model image's tag: the first 16 hex digits of its content digest."""
    return digest[:16]


@dataclass(frozen=True)
class ModelImagePlan:
    """What ``models-image`` builds and pushes."""

    base_image: str
    repository: str  # without registry
    digest: str
    files: tuple[ModelFile, ...]
    models_config: str
    versions: str = ""  # version_manifest(files)

    @property
    def tag(self) -> str:
        return model_image_tag(self.digest)

    def reference(self, registry: str) -> str:
        return f"{registry}/{self.repository}:{self.tag}"

    def dockerfile(self) -> str:
        return (
            f"FROM {self.base_image}\n"
            f"COPY --chown=0:0 repository {IMAGE_MODELS_DIR}/repository\n"
            f"COPY --chown=0:0 models.config {IMAGE_MODELS_DIR}/models.config\n"
            f"COPY --chown=0:0 {VERSIONS_FILE} {IMAGE_MODELS_DIR}/{VERSIONS_FILE}\n"
            f'LABEL {MANAGED_LABEL}="true" {ROLE_LABEL}="{MODEL_IMAGE_ROLE}" '
            f'{MODELS_DIGEST_LABEL}="{self.digest}"\n'
        )


def plan_model_image(
    spec: StackSpecFields,
    spec_path: Path,
    served: Mapping[str, Iterable[int]],
    models_config: str,
    *,
    base_image: str,
) -> ModelImagePlan:
    """The model image for these served versions (pure apart from reading the files)."""
    files = served_files(spec, spec_path, served)
    return ModelImagePlan(
        base_image=base_image,
        repository=model_repository_name(spec.project),
        digest=content_digest(files, models_config),
        files=tuple(files),
        models_config=models_config,
        versions=version_manifest(files),
    )


def _docker(argv: list[str], *, what: str, timeout: int = PUSH_TIMEOUT_S) -> str:
    try:
        result = subprocess.run(
            ["docker", *argv], capture_output=True, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{what} took over {timeout} s") from exc
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-8:]
        raise BuildError(f"{what} failed", log_tail=tail)
    return result.stdout.strip()


def image_present(reference: str) -> bool:
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", reference],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0


BASE_NAME_LABEL = "org.opencontainers.image.base.name"


def is_layer_prefix(base_layers: Sequence[str], image_layers: Sequence[str]) -> bool:
    """``base_layers`` are the bottom layers of ``image_layers`` (pure)."""
    return 0 < len(base_layers) <= len(image_layers) and list(base_layers) == list(
        image_layers[: len(base_layers)]
    )


def _inspect(reference: str) -> dict[str, object] | None:
    result = subprocess.run(
        ["docker", "image", "inspect", reference], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return None
    found = json.loads(result.stdout or "[]")
    return found[0] if found else None


def _layers(inspected: Mapping[str, object]) -> list[str]:
    rootfs = inspected.get("RootFS")
    layers = rootfs.get("Layers") if isinstance(rootfs, dict) else None
    return [str(layer) for layer in layers] if isinstance(layers, list) else []


def model_base_image(serving_image: str) -> str:
    """What model images are built ``FROM``: the serving image's own base (its OCI
    ``base.name`` label) when this engine has it and its layers are the serving image's bottom
    layers, else the serving image. Either way every layer under the models is one the nodes
    pull for the runtime anyway and the registry links; the base (156 MB for tfstack's runtime,
    against 1.35 GB) keeps what a model image push reads small."""
    serving = _inspect(serving_image)
    if serving is None:
        return serving_image
    config = serving.get("Config")
    labels = config.get("Labels") if isinstance(config, dict) else None
    base_name = labels.get(BASE_NAME_LABEL) if isinstance(labels, dict) else None
    if not base_name:
        return serving_image
    base = _inspect(str(base_name))
    if base is None or not is_layer_prefix(_layers(base), _layers(serving)):
        return serving_image
    return str(base_name)


def build_model_image(plan: ModelImagePlan, local_tag: str, *, say: Say) -> None:
    """Build the image from a hard-linked context (no copy of big variables when possible)."""
    if image_present(local_tag):
        return
    with tempfile.TemporaryDirectory(prefix="tfstack-models-") as tmp:
        context = Path(tmp)
        for item in plan.files:
            target = context / "repository" / item.relative
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(item.source, target)
            except OSError:
                shutil.copy2(item.source, target)
        (context / "repository").mkdir(exist_ok=True)
        (context / "models.config").write_text(plan.models_config, encoding="utf-8")
        (context / VERSIONS_FILE).write_text(plan.versions, encoding="utf-8")
        (context / "Dockerfile").write_text(plan.dockerfile(), encoding="utf-8")
        say(f"building model image {local_tag} ({len(plan.files)} files)")
        _docker(
            ["build", "--quiet", "--tag", local_tag, str(context)],
            what=f"building model image {local_tag}",
        )


def tag_image(local: str, reference: str) -> None:
    _docker(["tag", local, reference], what=f"tagging {local}")


def push_image(local: str, push_reference: str, *, say: Say) -> str:
    """Tag ``local`` as ``push_reference`` and push it; the pushed digest (sha256:...)."""
    tag_image(local, push_reference)
    say(f"pushing {push_reference}")
    output = _docker(["push", push_reference], what=f"pushing {push_reference}")
    for line in output.splitlines():
        if "digest: sha256:" in line:
            return line.split("digest: ", 1)[1].split()[0]
    raise BuildError(f"pushing {push_reference}: no digest in the registry's answer")


def local_image_id(reference: str) -> str:
    """The engine's image id (sha256:...) of ``reference``; BuildError when it is missing."""
    if not image_present(reference):
        raise BuildError(
            f"image {reference} is not in this engine",
            hint="build it first (`./tfstack images`, or the frontend image)",
        )
    return _docker(["image", "inspect", "--format", "{{.Id}}", reference], what="inspect")


# --------------------------------------------------------------------------- pruning


@dataclass(frozen=True)
class LocalImage:
    """One ``repository:tag`` of this engine's model images (``docker image ls``)."""

    repository: str
    tag: str
    image_id: str
    created: str  # the engine's CreatedAt: one format and zone per listing, so it sorts


def same_repository(name: str, repository: str) -> bool:
    """``name`` is ``repository`` itself or ``<registry host>/<repository>`` (the pushed tag),
    never another repository ending the same way (``someone/tfstack/models-x``)."""
    if name == repository:
        return True
    host, _, rest = name.partition("/")
    registry_like = "." in host or ":" in host or host == "localhost"
    return rest == repository and registry_like


def stale_model_images(
    images: Iterable[LocalImage],
    *,
    repository: str,
    current_tag: str,
    keep_previous: int = KEEP_PREVIOUS,
) -> list[str]:
    """References to remove: every tag of ``repository`` (local and pushed names) except the
    current one and the ``keep_previous`` most recently created others (pure).

    ``images`` must already be tfstack's model images (selected by label); the repository check
    here keeps other projects' model images, and anything untagged is left alone.
    """
    mine = [
        image
        for image in images
        if same_repository(image.repository, repository) and image.tag not in ("", "<none>")
    ]
    newest: dict[str, str] = {}
    for image in mine:
        newest[image.tag] = max(newest.get(image.tag, ""), image.created)
    others = sorted((t for t in newest if t != current_tag), key=newest.__getitem__, reverse=True)
    stale = set(others[max(keep_previous, 0) :])
    return sorted(f"{image.repository}:{image.tag}" for image in mine if image.tag in stale)


LISTING_FORMAT = "{{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedAt}}"


def parse_image_listing(text: str) -> list[LocalImage]:
    """The lines of :data:`LISTING_FORMAT` (tab-separated) as images (pure)."""
    images = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 4:
            images.append(LocalImage(*fields))
    return images


def prune_model_images(
    repository: str, current_tag: str, *, keep_previous: int = KEEP_PREVIOUS, say: Say
) -> list[str]:
    """Untag this project's older model images on this engine (see :func:`stale_model_images`);
    the references removed. Only images labelled as tfstack's model images are listed; an image a
    container still uses is kept (``docker image rm`` without force) and said, never fatal."""
    listing = _docker(
        [
            "image",
            "ls",
            "--filter",
            f"label={MANAGED_LABEL}=true",
            "--filter",
            f"label={ROLE_LABEL}={MODEL_IMAGE_ROLE}",
            "--format",
            LISTING_FORMAT,
        ],
        what="listing model images",
        timeout=60,
    )
    stale = stale_model_images(
        parse_image_listing(listing),
        repository=repository,
        current_tag=current_tag,
        keep_previous=keep_previous,
    )
    return remove_image_references(["docker"], stale, repository=repository, say=say)


def remove_image_references(
    engine: Sequence[str], references: Iterable[str], *, repository: str, say: Say, where: str = ""
) -> list[str]:
    """``docker image rm`` (no force) each reference on ``engine`` (the docker argv prefix: this
    host's, or a local cluster node's through its container); the ones removed. One a container
    still uses stays, and is said."""
    prefix = f"{where}: " if where else ""
    removed = []
    for reference in references:
        result = subprocess.run(
            [*engine, "image", "rm", reference],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if result.returncode == 0:
            removed.append(reference)
        else:
            say(f"{prefix}kept old model image {reference}: {result.stderr.strip()[-200:]}")
    if removed:
        say(f"{prefix}removed {len(removed)} old model image reference(s) of {repository}")
    return removed


# --------------------------------------------------------------------------- pruning elsewhere


def _instant(text: str) -> float:
    """An RFC 3339 / engine timestamp as seconds (nanoseconds cut to micro; pure, for sorting)."""
    text = text.strip().replace(" +0000 UTC", "Z").replace(" ", "T", 1)
    head, _, rest = text.partition(".")
    fraction = "".join(c for c in rest if c.isdigit())[:6] or "0"
    moment = datetime.strptime(head.rstrip("Z")[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return moment.timestamp() + float(f"0.{fraction}")


def _kept_tags(
    created_by_tag: Mapping[str, float], current_tag: str, keep_previous: int
) -> set[str]:
    others = sorted(
        (t for t in created_by_tag if t != current_tag),
        key=created_by_tag.__getitem__,
        reverse=True,
    )
    return {current_tag, *others[: max(keep_previous, 0)]}


@dataclass(frozen=True)
class RegistryTag:
    """One tag of a model image repository in a registry."""

    tag: str
    digest: str  # the manifest's digest (what a registry deletes)
    created: str  # the image config's ``created``


def stale_registry_manifests(
    tags: Iterable[RegistryTag], *, current_tag: str, keep_previous: int = KEEP_PREVIOUS
) -> list[str]:
    """Manifest digests to delete from one model image repository: every tag's but the current
    one's and the ``keep_previous`` newest others'; never a digest a kept tag names (deleting a
    manifest removes every tag on it) (pure)."""
    listed = list(tags)
    created: dict[str, float] = {}
    for item in listed:
        created[item.tag] = max(created.get(item.tag, 0.0), _instant(item.created))
    kept = _kept_tags(created, current_tag, keep_previous)
    kept_digests = {item.digest for item in listed if item.tag in kept}
    return sorted({i.digest for i in listed if i.tag not in kept and i.digest not in kept_digests})


@dataclass(frozen=True)
class EngineImage:
    """A model image in a node's engine (``docker image inspect``): nodes pull by digest, so
    their copies often have no tag; the content digest label says which model image it is."""

    image_id: str
    models_digest: str
    created: str
    references: tuple[str, ...]  # RepoTags and RepoDigests


def reference_repository(reference: str) -> str:
    """``host:port/repo:tag`` or ``host:port/repo@sha256:...`` -> ``host:port/repo`` (pure)."""
    name = reference.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    if ":" in last:
        last = last.rsplit(":", 1)[0]
    return f"{head}/{last}" if head else last


def stale_engine_references(
    images: Iterable[EngineImage],
    *,
    repository: str,
    current_tag: str,
    keep_previous: int = KEEP_PREVIOUS,
) -> list[str]:
    """References to remove from an engine: this repository's references of every model image
    but the current one and the ``keep_previous`` newest others (pure). Images without the
    content label, and other repositories' references (even on the same image), are left."""
    mine = [
        (
            image,
            [r for r in image.references if same_repository(reference_repository(r), repository)],
        )
        for image in images
        if image.models_digest
    ]
    mine = [(image, refs) for image, refs in mine if refs]
    created: dict[str, float] = {}
    for image, _ in mine:
        tag = model_image_tag(image.models_digest)
        created[tag] = max(created.get(tag, 0.0), _instant(image.created))
    kept = _kept_tags(created, current_tag, keep_previous)
    return sorted(
        ref
        for image, refs in mine
        if model_image_tag(image.models_digest) not in kept
        for ref in refs
    )


def parse_engine_images(text: str) -> list[EngineImage]:
    """``docker image inspect`` JSON -> model images (pure)."""
    found = []
    for item in json.loads(text or "[]"):
        labels = (item.get("Config") or {}).get("Labels") or {}
        found.append(
            EngineImage(
                image_id=str(item.get("Id", "")),
                models_digest=str(labels.get(MODELS_DIGEST_LABEL, "")),
                created=str(item.get("Created", "")),
                references=tuple(item.get("RepoTags") or ()) + tuple(item.get("RepoDigests") or ()),
            )
        )
    return found
