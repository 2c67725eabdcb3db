"""Phase 3 of loading a spec: what TF Serving or Docker would reject at start or reload.

Tfserving-contract sections 2-4, and what would make tfstack's own later steps fail. With
``check_disk`` the model repository is inspected too (file names only: nothing here imports
TensorFlow). These checks run once the schema is valid.

Version directory policy: TF Serving silently ignores children of a model directory whose names do
not parse as integers. tfstack treats such a directory (``v2``, ``1.5``, ``-3``) as an error because
it is nearly always a mistake that would leave a version unserved without a word. Names starting
with ``.`` are the exception: they are reserved for staging a version before it is renamed into
place, and are ignored like TF Serving does. Plain files are ignored.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfstack.core.versions import parse_version
from tfstack.errors import SpecProblem
from tfstack.spec.frontend import frontend_enabled
from tfstack.spec.frontend_rules import FrontendChecker
from tfstack.spec.model import (
    AllPolicy,
    LatestPolicy,
    ModelSpec,
    SampleRequest,
    SpecificPolicy,
    StackSpecFields,
    model_base_path,
    model_relative_path,
    spec_dir,
)
from tfstack.spec.prometheus_rules import check_prometheus
from tfstack.spec.slo_rules import check_slos
from tfstack.spec.yamlread import Lines, Loc, format_yaml_path, kind_of, with_article

MAX_BODY_FILE_BYTES = 64 * 1024 * 1024
"""Largest sample ``body_file`` read; a sample is a request body, not a data set."""
MIN_MEMORY_BYTES = 6 * 1024 * 1024
"""Docker refuses memory limits below 6 MiB."""
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


# Flags tfstack derives from spec fields; an extra flag would silently override them (last wins).
MANAGED_FLAGS: Mapping[str, str] = {
    "port": "serving.grpc_port",
    "rest_api_port": "serving.rest_port",
    "rest_api_timeout_in_ms": "serving.rest_api_timeout_ms",
    "model_config_file": "models",
    "model_name": "models",
    "model_base_path": "models",
    "model_config_file_poll_wait_seconds": "serving.config_poll_seconds",
    "file_system_poll_wait_seconds": "serving.file_system_poll_seconds",
    "max_num_load_retries": "serving.max_load_retries",
    "load_retry_interval_micros": "serving.load_retry_interval_micros",
    "tensorflow_intra_op_parallelism": "serving.intra_op_threads",
    "tensorflow_inter_op_parallelism": "serving.inter_op_threads",
    "enable_model_warmup": "serving.enable_model_warmup",
    "enable_batching": "batching.enabled",
    "batching_parameters_file": "batching",
    "monitoring_config_file": "monitoring",
    "allow_version_labels_for_unavailable_models": "models[].labels (set automatically)",
}


@dataclass(frozen=True)
class ModelInventory:
    """What the model repository holds for one model (empty when disk checks are off)."""

    name: str
    host_dir: Path
    on_disk: tuple[int, ...]  # numbered version directories found, ascending
    served: tuple[int, ...]  # the versions the policy keeps among those found, ascending
    labels: Mapping[str, int]


def _escapes(base: Path, relative: str) -> bool:
    """Whether ``relative`` joined to ``base`` leaves ``base`` (lexically, before symlinks)."""
    root = os.path.normpath(base)
    target = os.path.normpath(os.path.join(root, relative))
    return not (target == root or target.startswith(root.rstrip(os.sep) + os.sep))


def _parse_bytes(size: str) -> float:
    match = re.match(r"^([0-9]+(?:\.[0-9]+)?)([kmgKMG]?)[bB]?$", size)
    if match is None:  # the schema already guarantees the format
        return 0.0
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return float(match.group(1)) * scale


_IMAGE_REFERENCE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"  # optional registry host[:port]/
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"  # first path component
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"  # more components
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # tag
    r"(?:@sha256:[a-f0-9]{64})?$"  # digest
)


@dataclass
class _DiskVersions:
    exists: bool
    versions: dict[int, str] = field(default_factory=dict)  # version → directory name


class Checker:
    """The semantic rules; each appends problems and never stops at the first."""

    def __init__(
        self,
        spec: StackSpecFields,
        path: Path,
        file: str,
        lines: Lines,
        *,
        check_disk: bool,
        project_root: Path | None,
    ) -> None:
        self.spec = spec
        self.path = path
        self.file = file
        self.lines = lines
        self.check_disk = check_disk
        self.spec_dir = spec_dir(path)
        self.project_root = (
            Path(os.path.abspath(project_root)) if project_root else self.spec_dir.parent
        )
        self.problems: list[SpecProblem] = []
        self.inventory: list[ModelInventory] = []
        # Resolved once (spec.model_host_dir resolves per call, too slow for 200 models).
        repo = spec.model_repository
        joined = repo if os.path.isabs(repo) else os.path.join(self.spec_dir, repo)
        try:
            self.repository_dir = Path(joined if os.path.isabs(repo) else os.path.realpath(joined))
        except (OSError, ValueError):  # symlink loops, NUL characters: reported below
            self.repository_dir = Path(os.path.normpath(joined))

    def host_dir(self, model: ModelSpec) -> Path:
        """The model's directory on the host, as :func:`tfstack.spec.model_host_dir` gives it."""
        relative = Path(model_relative_path(model))
        if relative.is_absolute():
            return relative
        return Path(os.path.normpath(self.repository_dir / relative))

    def add(
        self,
        loc: Loc,
        message: str,
        hint: str | None = None,
        *,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        self.problems.append(
            SpecProblem(
                file or self.file,
                format_yaml_path(loc),
                message,
                line if line is not None else self.lines.at(loc),
                hint,
            )
        )

    def run(self) -> None:
        repository_ok = self.check_repository()
        self.check_models(repository_ok)
        self.check_serving()
        self.check_batching()
        self.check_monitoring()
        FrontendChecker(self.spec, self.path, self.add, check_disk=self.check_disk).run()
        check_slos(self.spec, self.add)
        check_prometheus(self.spec, self.add)

    # -- paths ------------------------------------------------------------------------------

    def check_repository(self) -> bool:
        repo = self.spec.model_repository
        if _nul_in_path(self, ("model_repository",), repo):
            return False
        if not repo.strip():
            self.add(
                ("model_repository",),
                "must not be empty",
                "give the directory holding one folder per model, e.g. ../models",
            )
            return False
        if not os.path.isabs(repo) and _escapes(
            self.project_root, os.path.join(self.spec_dir, repo)
        ):
            self.add(
                ("model_repository",),
                f"'{repo}' leaves the project directory {self.project_root}",
                "keep relative paths inside the project, or give an absolute path",
            )
            return False
        if self.check_disk:
            host = self.repository_dir
            if not os.path.isdir(host):
                what = "is not a directory" if os.path.exists(host) else "does not exist"
                self.add(
                    ("model_repository",),
                    f"model repository {host} {what}",
                    "create it (the demo's is made by `invoke models`) or fix the path",
                )
                return False
        return True

    # -- models -----------------------------------------------------------------------------

    def check_models(self, repository_ok: bool) -> None:
        first_index: dict[str, int] = {}
        mounts: dict[str, tuple[int, Path]] = {}
        for index, model in enumerate(self.spec.models):
            loc: Loc = ("models", index)
            if model.name in first_index:
                self.add(
                    (*loc, "name"),
                    f"model name '{model.name}' is already used by "
                    f"models[{first_index[model.name]}]",
                    "TF Serving needs unique names; rename one of them",
                )
            else:
                first_index[model.name] = index
            path_ok = self.check_model_path(model, loc)
            if path_ok:
                host = self.host_dir(model)
                base = model_base_path(model)
                if base in mounts and mounts[base][1] != host:
                    self.add(
                        (*loc, "path"),
                        f"this model's directory would appear in the server "
                        f"at {base}, like a different directory of "
                        f"models[{mounts[base][0]}]",
                        "an absolute model path is mounted at /models/<name>; rename the "
                        "model or move the directory into the repository",
                    )
                mounts.setdefault(base, (index, host))
            self.check_policy_and_labels(model, loc, path_ok and repository_ok)
            self.check_samples(model, loc)

    def check_model_path(self, model: ModelSpec, loc: Loc) -> bool:
        if model.path is None or (Path(model.path).is_absolute() and "\0" not in model.path):
            return True
        relative = model.path
        if _nul_in_path(self, (*loc, "path"), relative):
            return False
        normal = os.path.normpath(relative) if relative.strip() else "."
        if normal == "." or _escapes(Path("/repository"), relative):
            self.add(
                (*loc, "path"),
                f"'{relative}' is not a directory inside the model repository",
                "give a folder below model_repository (default: the model "
                "name) or an absolute path",
            )
            return False
        return True

    def scan(self, host_dir: Path, model_loc: Loc, model: ModelSpec) -> _DiskVersions:
        """Numbered version directories; problems for everything TF Serving would mishandle."""
        loc = model_loc if model.path is not None else model_loc[:-1]
        try:
            entries = list(os.scandir(host_dir))
        except FileNotFoundError:
            self.add(
                loc,
                f"model directory {host_dir} does not exist",
                "create it with numbered version directories (1/, 2/, ...) holding a "
                "SavedModel (the demo's come from `invoke models`), or fix `path` or "
                "`model_repository`",
            )
            return _DiskVersions(False)
        except NotADirectoryError:
            self.add(loc, f"{host_dir} is a file, not a model directory")
            return _DiskVersions(False)
        except (OSError, ValueError) as exc:
            self.add(loc, f"cannot list {host_dir}: {getattr(exc, 'strerror', None) or exc}")
            return _DiskVersions(False)
        found = _DiskVersions(True)
        problems_before = len(self.problems)
        for entry in sorted(entries, key=lambda e: e.name):
            name = entry.name
            if name in SAVED_MODEL_FILES:
                self.add(
                    loc,
                    f"{host_dir} holds a SavedModel directly; TF Serving "
                    "only loads SavedModels inside numbered version directories",
                    f"move its contents into {host_dir / '1'}",
                )
                continue
            if name.startswith(".") or not entry.is_dir():
                continue
            version = parse_version(name)
            if version is None:
                self.add(
                    loc,
                    f"version directory '{name}' in {host_dir} is not a "
                    "whole number; TF Serving would silently ignore it",
                    "rename it to a number such as 1, or to a name starting with '.' "
                    "while it is being staged",
                )
                continue
            if version in found.versions:
                self.add(
                    loc,
                    f"directories '{found.versions[version]}' and '{name}' "
                    f"in {host_dir} are both version {version}",
                    "remove one of them",
                )
                continue
            found.versions[version] = name
            if not any(os.path.isfile(os.path.join(entry.path, f)) for f in SAVED_MODEL_FILES):
                self.add(
                    loc,
                    f"version {version} ({entry.path}) has no "
                    "saved_model.pb; TF Serving would fail to load it",
                    "export a SavedModel there, or remove the directory",
                )
        if not found.versions and len(self.problems) == problems_before:
            self.add(
                loc,
                f"model directory {host_dir} has no numbered version "
                "directory; TF Serving would wait for one forever with its ports closed",
                f"add {host_dir / '1'} holding a SavedModel",
            )
        return found

    def check_policy_and_labels(self, model: ModelSpec, loc: Loc, scan_disk: bool) -> None:
        policy = model.policy
        if isinstance(policy, SpecificPolicy):
            seen: set[int] = set()
            for i, version in enumerate(policy.specific):
                if version in seen:
                    self.add(
                        (*loc, "policy", "specific", i),
                        f"version {version} is listed twice",
                        "list each version once",
                    )
                seen.add(version)
        disk = (
            self.scan(self.host_dir(model), (*loc, "path"), model)
            if (self.check_disk and scan_disk)
            else None
        )
        on_disk = sorted(disk.versions) if disk is not None else []
        served: list[int] | None
        if isinstance(policy, SpecificPolicy):
            served = sorted(set(policy.specific))
        elif disk is None:
            served = None  # unknown without looking at the disk
        elif isinstance(policy, AllPolicy):
            served = on_disk
        else:
            served = on_disk[-policy.latest :]
        if disk is not None and disk.exists and isinstance(policy, SpecificPolicy):
            for i, version in enumerate(policy.specific):
                if version not in disk.versions:
                    self.add(
                        (*loc, "policy", "specific", i),
                        f"version {version} of model '{model.name}' is not on disk "
                        f"(found: {_versions(on_disk)})",
                        "add the version directory or remove it from the list",
                    )
            served = [v for v in served or [] if v in disk.versions]
        for label, version in model.labels.items():
            label_loc = (*loc, "labels", label)
            if disk is not None and disk.exists and version not in disk.versions:
                self.add(
                    label_loc,
                    f"label '{label}' points at version {version} of model "
                    f"'{model.name}', which is not on disk (found: {_versions(on_disk)})",
                    "point the label at an existing version",
                )
            elif served is not None and version not in served and (disk is None or disk.exists):
                self.add(
                    label_loc,
                    f"label '{label}' points at version {version}, which the "
                    f"policy {_policy_text(model)} does not serve "
                    f"(served: {_versions(served)})",
                    "add the version to the policy (e.g. `specific: [...]`) or move the label",
                )
        if disk is not None:
            self.inventory.append(
                ModelInventory(
                    model.name,
                    self.host_dir(model),
                    tuple(on_disk),
                    tuple(served or ()),
                    dict(model.labels),
                )
            )

    # -- samples ----------------------------------------------------------------------------

    def check_samples(self, model: ModelSpec, loc: Loc) -> None:
        names: dict[str, int] = {}
        for index, sample in enumerate(model.samples):
            sloc: Loc = (*loc, "samples", index)
            if sample.name in names:
                self.add(
                    (*sloc, "name"),
                    f"sample name '{sample.name}' is already used by "
                    f"samples[{names[sample.name]}] of model '{model.name}'",
                    "give each sample of a model its own name",
                )
            names.setdefault(sample.name, index)
            if sample.body is not None:
                self.check_body(sample, sample.body, (*sloc, "body"))
            elif sample.body_file is not None:
                self.check_body_file(sample, sloc)

    def check_body_file(self, sample: SampleRequest, loc: Loc) -> None:
        assert sample.body_file is not None
        floc = (*loc, "body_file")
        name = sample.body_file
        if _nul_in_path(self, floc, name):
            return
        if not name.strip():
            self.add(floc, "must not be empty", "name a JSON file relative to the spec")
            return
        if not os.path.isabs(name) and _escapes(
            self.project_root, os.path.join(self.spec_dir, name)
        ):
            self.add(
                floc,
                f"'{name}' leaves the project directory {self.project_root}",
                "keep sample files inside the project (e.g. config/samples/)",
            )
            return
        if not self.check_disk:
            return
        target = self.spec_dir / name
        try:
            size = target.stat().st_size
            if not target.is_file():
                self.add(floc, f"{target} is not a file")
                return
            if size > MAX_BODY_FILE_BYTES:
                self.add(
                    floc,
                    f"{target} is larger than {MAX_BODY_FILE_BYTES // (1024 * 1024)} MiB",
                    "a sample is one request; use a smaller one",
                )
                return
            raw = target.read_bytes()
        except FileNotFoundError:
            self.add(
                floc,
                f"sample file {target} does not exist",
                "paths are relative to the spec's directory",
            )
            return
        except (OSError, ValueError) as exc:
            self.add(floc, f"cannot read {target}: {getattr(exc, 'strerror', None) or exc}")
            return
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            line = getattr(exc, "lineno", None)
            detail = getattr(exc, "msg", None) or str(exc)
            self.add(
                floc,
                f"{target} is not valid JSON: {detail}" + (f" (line {line})" if line else ""),
                "a sample file holds one JSON request",
            )
            return
        except RecursionError:
            self.add(floc, f"{target} is nested too deeply to be a request body")
            return
        if not isinstance(body, dict):
            self.add(floc, f"{target} must hold a JSON object, not {with_article(kind_of(body))}")
            return
        self.check_body(sample, body, floc)

    def check_body(self, sample: SampleRequest, body: Mapping[str, Any], loc: Loc) -> None:
        if sample.method == "predict":
            present = [key for key in ("instances", "inputs") if key in body]
            if len(present) != 1:
                got = " and ".join(present) if present else "neither"
                self.add(
                    loc,
                    f"a predict request needs exactly one of 'instances' (row format) "
                    f"or 'inputs' (columnar); got {got}",
                    'e.g. {"instances": [1.0, 2.0]}',
                )
        else:
            examples = body.get("examples")
            if not isinstance(examples, list) or not examples:
                self.add(
                    loc,
                    f"a {sample.method} request needs a non-empty 'examples' list",
                    'e.g. {"examples": [{"x": 1.0}]}',
                )
            elif not all(isinstance(e, dict) for e in examples):
                self.add(
                    loc, "every entry of 'examples' must be a mapping of feature names to values"
                )
        inline = body.get("signature_name")
        if (
            inline is not None
            and sample.signature_name is not None
            and (inline != sample.signature_name)
        ):
            self.add(
                loc,
                f"the body's signature_name '{inline}' contradicts the sample's "
                f"signature_name '{sample.signature_name}'",
                "give it in one place",
            )

    # -- serving ----------------------------------------------------------------------------

    def check_serving(self) -> None:
        serving = self.spec.serving
        loc: Loc = ("serving",)
        # Behind the door the replicas publish nothing: the door owns one port of each kind.
        n = 1 if frontend_enabled(self.spec.frontend, serving.replicas) else serving.replicas
        grpc = range(serving.grpc_port, serving.grpc_port + n)
        rest = range(serving.rest_port, serving.rest_port + n)
        if set(grpc) & set(rest):
            if n == 1:
                message = f"grpc_port and rest_port are both {serving.grpc_port}"
            else:
                message = (
                    f"with {n} replicas the gRPC ports {grpc.start}-{grpc.stop - 1} and "
                    f"REST ports {rest.start}-{rest.stop - 1} overlap"
                )
            hint = (
                "use two different ports, e.g. 8500 and 8501"
                if n == 1
                else "N replicas publish the host port ranges grpc_port..grpc_port+N-1 and "
                "rest_port..rest_port+N-1; move rest_port"
            )
            self.add((*loc, "rest_port"), message, hint)
        for name, ports in (("grpc_port", grpc), ("rest_port", rest)):
            if ports.stop - 1 > 65535:
                self.add(
                    (*loc, name),
                    f"with {n} replicas the ports run past 65535 ({ports.start}-{ports.stop - 1})",
                    "choose a lower port",
                )
        try:
            ipaddress.ip_address(serving.bind_address)
        except ValueError:
            self.add(
                (*loc, "bind_address"),
                f"'{serving.bind_address}' is not an IP address",
                "Docker publishes ports on an IP: 127.0.0.1 (default), 0.0.0.0 or a host address",
            )
        if not _IMAGE_REFERENCE.match(serving.image):
            self.add(
                (*loc, "image"),
                f"'{serving.image}' is not a valid image reference",
                "e.g. tfstack/serving-runtime:latest (lowercase repository, optional tag)",
            )
        self.check_user(serving.user)
        memory = serving.resources.memory
        if memory is not None and _parse_bytes(memory) < MIN_MEMORY_BYTES:
            self.add(
                (*loc, "resources", "memory"),
                f"memory limit {memory} is below Docker's minimum of 6 MiB",
                "a TF Serving process needs hundreds of MiB; e.g. 2g",
            )
        self.check_flags()

    def check_user(self, user: str) -> None:
        loc: Loc = ("serving", "user")
        parts = user.split(":")
        if len(parts) > 2 or not all(re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", p) for p in parts):
            self.add(loc, f"'{user}' is not a user: give uid:gid such as 1000:1000")
            return
        if parts[0] in ("0", "root"):
            self.add(
                loc,
                "the server must not run as root",
                "use an unprivileged uid:gid such as 1000:1000",
            )

    def check_flags(self) -> None:
        serving = self.spec.serving
        session_parallelism = 0
        for index, flag in enumerate(serving.extra_flags):
            loc: Loc = ("serving", "extra_flags", index)
            if not flag.startswith("--") or len(flag) < 3:
                self.add(loc, f"'{flag}' is not a server flag", "write flags as --name=value")
                continue
            name, _, value = flag[2:].partition("=")
            if name in MANAGED_FLAGS:
                self.add(
                    loc,
                    f"--{name} is set by tfstack from {MANAGED_FLAGS[name]}; an extra "
                    "flag would silently override it",
                    f"set {MANAGED_FLAGS[name]} instead",
                )
            if name == "tensorflow_session_parallelism":
                try:
                    session_parallelism = int(value)
                except ValueError:
                    self.add(loc, f"--{name} needs a whole number, got '{value}'")
        if session_parallelism > 0 and (serving.intra_op_threads > 0 or serving.inter_op_threads):
            self.add(
                ("serving", "intra_op_threads"),
                "--tensorflow_session_parallelism cannot be combined with intra_op_threads/"
                "inter_op_threads (TF Serving refuses all three, and ignores the session "
                "setting when only one of the others is set)",
                "set either the session flag or intra/inter_op_threads",
            )

    # -- batching and monitoring -------------------------------------------------------------

    def check_batching(self) -> None:
        batching = self.spec.batching
        sizes = batching.allowed_batch_sizes
        loc: Loc = ("batching", "allowed_batch_sizes")
        for i in range(1, len(sizes)):
            if sizes[i] <= sizes[i - 1]:
                self.add(
                    (*loc, i),
                    f"allowed_batch_sizes must increase: {sizes[i]} follows {sizes[i - 1]}",
                    "list sizes in increasing order without repeats",
                )
        if sizes and sizes[-1] != batching.max_batch_size:
            self.add(
                (*loc, len(sizes) - 1),
                f"the last allowed batch size ({sizes[-1]}) must "
                f"equal max_batch_size ({batching.max_batch_size})",
                "TF Serving refuses the batching parameters otherwise",
            )

    def check_monitoring(self) -> None:
        path = self.spec.monitoring.path
        loc: Loc = ("monitoring", "path")
        segments = path.split("/")[1:]
        if path == "/" or path.rstrip("/") == "/v1" or path.startswith("/v1/"):
            self.add(
                loc,
                f"'{path}' collides with TF Serving's REST API paths",
                "use a dedicated path such as /monitoring/prometheus/metrics",
            )
        elif any(s in ("", ".", "..") for s in segments[:-1]) or segments[-1] in (".", ".."):
            self.add(
                loc,
                f"'{path}' has empty, '.' or '..' segments",
                "use a plain path such as /monitoring/prometheus/metrics",
            )


def _nul_in_path(checker: Checker, loc: Loc, path: str) -> bool:
    """Report (and say so) a path holding a NUL character, which no file system accepts."""
    if "\0" not in path:
        return False
    checker.add(loc, "path contains a NUL character", "remove the \\0 escape")
    return True


def _versions(versions: Sequence[int]) -> str:
    return ", ".join(str(v) for v in versions) if versions else "none"


def _policy_text(model: ModelSpec) -> str:
    policy = model.policy
    if isinstance(policy, LatestPolicy):
        return f"latest: {policy.latest}"
    if isinstance(policy, AllPolicy):
        return "all"
    return f"specific: {list(policy.specific)}"
