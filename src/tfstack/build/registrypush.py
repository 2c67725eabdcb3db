"""Pushing an image with uncompressed layers: the local cluster's registry, where gzip is the cost.

``docker push`` (engine 20.10) gzips every layer on one core: the 1.35 GB runtime image took 44-61 s
to push here, and then each node spent its pull decompressing it. On a registry reached over
loopback or a fast LAN, the bytes on the wire cost less than the CPU: this module streams ``docker
save`` into the registry's v2 API (distribution 2.8) with the layers as they are, media type
``application/vnd.docker.image.rootfs.diff.tar``, the blob digest being the layer's diff ID. The
pushed image has the engine's image ID (the config blob is the engine's own bytes), so a node that
pulls it gets the same image, and an engine that has it already fetches only the manifest.

Plain HTTP without authentication only (the local cluster's registry, an ``insecure-registries``
one); for anything else ``docker push`` stays the path (``deploy.swarm.layers: gzip``), with the
engine's credentials and TLS. Only the side-effect functions talk to the engine or the registry;
:func:`manifest_for` and :func:`parse_save_manifest` are pure.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import posixpath
import subprocess
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import urlsplit

from tfstack.build.modelimage import KEEP_PREVIOUS, RegistryTag, stale_registry_manifests
from tfstack.errors import BuildError

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
UNCOMPRESSED_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
CHUNK = 1 << 20
SMALL_LAYER = 64 << 20
"""Layers up to this size are read into memory (hashed before any upload decision)."""
HTTP_TIMEOUT_S = 300
SAVE_TIMEOUT_S = 1800
Say = Callable[[str], None]


@dataclass(frozen=True)
class Blob:
    digest: str  # sha256:...
    size: int


@dataclass(frozen=True)
class SavedImage:
    """``manifest.json`` of a ``docker save`` archive: the config file and the layers, in order."""

    config: str
    layers: tuple[str, ...]


def parse_save_manifest(text: str) -> SavedImage:
    """The first (only) image of a ``docker save`` archive's manifest.json (pure)."""
    entries = json.loads(text)
    if not isinstance(entries, list) or len(entries) != 1:
        raise BuildError("docker save: expected exactly one image in manifest.json")
    entry = entries[0]
    return SavedImage(config=str(entry["Config"]), layers=tuple(str(p) for p in entry["Layers"]))


def manifest_for(config: Blob, layers: Sequence[Blob]) -> bytes:
    """The schema 2 manifest of an image with uncompressed layers (pure; compact JSON)."""
    document = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "size": config.size, "digest": config.digest},
        "layers": [
            {"mediaType": UNCOMPRESSED_LAYER, "size": layer.size, "digest": layer.digest}
            for layer in layers
        ],
    }
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def split_registry(address: str) -> tuple[str, str]:
    """``host:port[/prefix]`` -> (``host:port``, ``prefix/`` or "") (pure)."""
    host, _, prefix = address.partition("/")
    return host, (prefix.strip("/") + "/") if prefix else ""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryClient:
    """The few calls of the registry's v2 API a push needs, over plain HTTP."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.host, self.prefix = split_registry(address)

    def _connection(self) -> http.client.HTTPConnection:
        host, _, port = self.host.partition(":")
        return http.client.HTTPConnection(host, int(port or 80), timeout=HTTP_TIMEOUT_S)

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        connection = self._connection()
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            connection.close()

    def _check(self, status: int, expected: tuple[int, ...], what: str, body: bytes) -> None:
        if status in expected:
            return
        hint = None
        if status == 401:
            hint = "this push needs no credentials; use deploy.swarm.layers: gzip (docker push)"
        raise BuildError(
            f"registry {self.address}: {what} answered HTTP {status}: {body[:200]!r}", hint=hint
        )

    def repository(self, name: str) -> str:
        return self.prefix + name

    def manifest(self, repository: str, reference: str) -> tuple[str, dict[str, object]] | None:
        """(digest, manifest) of ``repository:reference``; None when absent."""
        status, headers, body = self._request(
            "GET",
            f"/v2/{self.repository(repository)}/manifests/{reference}",
            headers={"Accept": MANIFEST_V2},
        )
        if status == 404:
            return None
        self._check(status, (200,), f"reading {repository}:{reference}", body)
        document = json.loads(body)
        return headers.get("docker-content-digest", sha256_digest(body)), document

    def has_blob(self, repository: str, digest: str) -> bool:
        status, _, _ = self._request("HEAD", f"/v2/{self.repository(repository)}/blobs/{digest}")
        return status == 200

    def mount(self, repository: str, digest: str, source: str) -> bool:
        """Link a blob another repository of this registry holds; False when it could not."""
        status, _, _ = self._request(
            "POST",
            f"/v2/{self.repository(repository)}/blobs/uploads/"
            f"?mount={digest}&from={self.repository(source)}",
            headers={"Content-Length": "0"},
            body=b"",
        )
        return status == 201

    def _start_upload(self, repository: str) -> str:
        status, headers, body = self._request(
            "POST",
            f"/v2/{self.repository(repository)}/blobs/uploads/",
            headers={"Content-Length": "0"},
            body=b"",
        )
        self._check(status, (202,), f"starting an upload to {repository}", body)
        return _path_of(headers["location"])

    def upload(self, repository: str, chunks: Iterator[bytes], size: int) -> str:
        """Stream ``size`` bytes into a new blob of ``repository``; its digest."""
        location = self._start_upload(repository)
        digest = hashlib.sha256()
        connection = self._connection()
        try:
            connection.putrequest("PATCH", location)
            connection.putheader("Content-Type", "application/octet-stream")
            connection.putheader("Content-Length", str(size))
            connection.endheaders()
            for chunk in chunks:
                digest.update(chunk)
                connection.send(chunk)
            response = connection.getresponse()
            body = response.read()
            self._check(response.status, (202,), f"uploading a blob to {repository}", body)
            location = _path_of(response.getheader("Location") or location)
        finally:
            connection.close()
        blob = "sha256:" + digest.hexdigest()
        separator = "&" if "?" in location else "?"
        status, _, body = self._request(
            "PUT", f"{location}{separator}digest={blob}", body=b"", headers={"Content-Length": "0"}
        )
        self._check(status, (201,), f"finishing a blob upload to {repository}", body)
        return blob

    def tags(self, repository: str) -> list[str]:
        status, _, body = self._request("GET", f"/v2/{self.repository(repository)}/tags/list")
        if status == 404:
            return []
        self._check(status, (200,), f"listing the tags of {repository}", body)
        return [str(tag) for tag in json.loads(body).get("tags") or []]

    def blob(self, repository: str, digest: str) -> bytes:
        status, _, body = self._request("GET", f"/v2/{self.repository(repository)}/blobs/{digest}")
        self._check(status, (200,), f"reading blob {digest} of {repository}", body)
        return body

    def delete_manifest(self, repository: str, digest: str) -> None:
        status, _, _ = self._request(
            "DELETE", f"/v2/{self.repository(repository)}/manifests/{digest}"
        )
        hint = None
        if status == 405:
            hint = "the registry needs storage.delete.enabled (REGISTRY_STORAGE_DELETE_ENABLED)"
        if status not in (202, 404):
            raise BuildError(
                f"registry {self.address}: deleting {repository}@{digest} answered HTTP {status}",
                hint=hint,
            )

    def put_manifest(self, repository: str, tag: str, manifest: bytes) -> str:
        status, headers, body = self._request(
            "PUT",
            f"/v2/{self.repository(repository)}/manifests/{tag}",
            body=manifest,
            headers={"Content-Type": MANIFEST_V2},
        )
        self._check(status, (201,), f"storing the manifest of {repository}:{tag}", body)
        return headers.get("docker-content-digest", sha256_digest(manifest))


def _path_of(location: str) -> str:
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


@dataclass
class _Pass:
    """What one read of ``docker save`` found and stored."""

    blobs: dict[str, Blob] = field(default_factory=dict)  # archive path -> blob
    config: bytes = b""
    saved: SavedImage | None = None
    unmatched: set[str] = field(default_factory=set)  # big layers whose size misled
    links: dict[str, str] = field(default_factory=dict)  # a repeated layer: path -> its twin

    def blob(self, path: str) -> Blob:
        return self.blobs[self.links.get(path, path)]


def _ensure_small(
    registry: RegistryClient, repository: str, data: bytes, sources: Sequence[str]
) -> Blob:
    digest = sha256_digest(data)
    if not registry.has_blob(repository, digest) and not any(
        registry.mount(repository, digest, source) for source in sources
    ):
        uploaded = registry.upload(repository, iter([data]), len(data))
        if uploaded != digest:
            raise BuildError(f"registry {registry.address}: blob {digest} stored as {uploaded}")
    return Blob(digest, len(data))


def _read_save(
    local: str,
    registry: RegistryClient,
    repository: str,
    *,
    known: Mapping[int, tuple[str, str]],  # size -> (digest, repository holding it)
    force: frozenset[str] = frozenset(),
) -> _Pass:
    """One pass over ``docker save local``: every layer stored in (or linked into) the repo."""
    found = _Pass()
    sources = sorted({source for _, source in known.values()})
    process = subprocess.Popen(
        ["docker", "save", local], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
            for member in archive:
                if member.issym() and member.name.endswith("/layer.tar"):
                    # docker save links a layer that occurs twice to its first copy
                    twin = posixpath.normpath(
                        posixpath.join(posixpath.dirname(member.name), member.linkname)
                    )
                    found.links[member.name] = twin
                    continue
                if not member.isfile():
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                name = member.name
                if name.endswith("/layer.tar"):
                    found.blobs[name] = _store_layer(
                        registry,
                        repository,
                        handle,
                        member.size,
                        known=known,
                        sources=sources,
                        name=name,
                        force=force,
                        found=found,
                    )
                elif name == "manifest.json":
                    found.saved = parse_save_manifest(handle.read().decode("utf-8"))
                elif name.endswith(".json") and "/" not in name:
                    found.config = handle.read()
    except (tarfile.TarError, OSError) as exc:
        process.kill()
        raise BuildError(f"reading `docker save {local}`: {exc}") from exc
    finally:
        _, stderr = process.communicate(timeout=SAVE_TIMEOUT_S)
    if process.returncode != 0:
        raise BuildError(f"`docker save {local}` failed: {stderr.decode(errors='replace')[-300:]}")
    return found


def _store_layer(
    registry: RegistryClient,
    repository: str,
    handle: IO[bytes],
    size: int,
    *,
    known: Mapping[int, tuple[str, str]],
    sources: Sequence[str],
    name: str,
    force: frozenset[str],
    found: _Pass,
) -> Blob:
    if size <= SMALL_LAYER:
        return _ensure_small(registry, repository, handle.read(), sources)
    if size in known and name not in force:
        # Most likely a layer the registry holds already (the runtime's, under a model image):
        # hash it without sending it, then link it.
        digest = hashlib.sha256()
        for chunk in _chunks(handle):
            digest.update(chunk)
        blob = "sha256:" + digest.hexdigest()
        expected, source = known[size]
        if blob == expected and (
            registry.has_blob(repository, blob) or registry.mount(repository, blob, source)
        ):
            return Blob(blob, size)
        found.unmatched.add(name)  # same size, other bytes: sent on a second pass
        return Blob(blob, size)
    return Blob(registry.upload(repository, _chunks(handle), size), size)


def known_layers(
    registry: RegistryClient, references: Sequence[tuple[str, str]]
) -> dict[int, tuple[str, str]]:
    """Layer size -> (digest, repository) of images already in the registry ((repo, tag) each)."""
    known: dict[int, tuple[str, str]] = {}
    for repository, tag in references:
        found = registry.manifest(repository, tag)
        if found is None:
            continue
        layers = found[1].get("layers")
        for layer in layers if isinstance(layers, list) else []:
            known.setdefault(int(layer["size"]), (str(layer["digest"]), repository))
    return known


def push_uncompressed(
    local: str,
    image_id: str,
    registry_address: str,
    repository: str,
    tag: str,
    *,
    share_from: Sequence[tuple[str, str]] = (),
    say: Say,
) -> str:
    """Push engine image ``local`` as ``registry/repository:tag`` with uncompressed layers; the
    manifest digest. Nothing is sent when the tag already names this image (``image_id`` is its
    config digest); layers of ``share_from`` images ((repository, tag) in the same registry) are
    linked, not sent again."""
    registry = RegistryClient(registry_address)
    try:
        present = registry.manifest(repository, tag)
        config = present[1].get("config") if present else None
        if present and isinstance(config, dict) and config.get("digest") == image_id:
            return present[0]
        say(f"pushing {registry_address}/{repository}:{tag} (uncompressed layers)")
        known = known_layers(registry, share_from)
        found = _read_save(local, registry, repository, known=known)
        if found.unmatched:
            found = _read_save(
                local, registry, repository, known=known, force=frozenset(found.unmatched)
            )
        if found.saved is None or not found.config:
            raise BuildError(f"`docker save {local}`: no manifest.json or image config")
        config_blob = _ensure_small(registry, repository, found.config, ())
        if config_blob.digest != image_id:
            raise BuildError(
                f"`docker save {local}` gave config {config_blob.digest}, "
                f"the engine says {image_id}"
            )
        layers = [found.blob(path) for path in found.saved.layers]
        return registry.put_manifest(repository, tag, manifest_for(config_blob, layers))
    except (OSError, http.client.HTTPException) as exc:
        raise BuildError(f"registry {registry_address}: {exc}") from exc


def registry_tags(registry: RegistryClient, repository: str) -> list[RegistryTag]:
    """Every tag of ``repository`` with its manifest digest and its config's creation time."""
    found = []
    for tag in registry.tags(repository):
        present = registry.manifest(repository, tag)
        if present is None:
            continue
        digest, document = present
        config = document.get("config")
        created = ""
        if isinstance(config, dict) and config.get("digest"):
            created = str(
                json.loads(registry.blob(repository, str(config["digest"]))).get("created")
            )
        found.append(RegistryTag(tag, digest, created or "1970-01-01T00:00:00Z"))
    return found


def prune_registry_repository(
    registry_address: str,
    repository: str,
    current_tag: str,
    *,
    keep_previous: int = KEEP_PREVIOUS,
    say: Say,
) -> list[str]:
    """Delete the manifests of ``repository``'s older model images from a registry (current and
    ``keep_previous`` newest others kept; :func:`stale_registry_manifests`); the digests deleted.
    The registry frees the space only in its garbage collection."""
    registry = RegistryClient(registry_address)
    try:
        stale = stale_registry_manifests(
            registry_tags(registry, repository),
            current_tag=current_tag,
            keep_previous=keep_previous,
        )
        for digest in stale:
            registry.delete_manifest(repository, digest)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise BuildError(f"registry {registry_address}: {exc}") from exc
    if stale:
        say(f"deleted {len(stale)} old model image manifest(s) of {repository} from the registry")
    return stale
