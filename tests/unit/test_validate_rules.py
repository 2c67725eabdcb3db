"""The semantic phase: what TF Serving or Docker would reject, found before anything is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tfstack.errors import SpecError
from tfstack.spec import check_spec, load_spec, validate_spec

from .specfixtures import Project, messages, only, valid_spec


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path).with_models()


def model(spec: dict[str, Any], index: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = spec["models"][index]
    return result


# -- models and versions on disk -------------------------------------------------------------


def test_valid_spec_with_models_on_disk(project: Project) -> None:
    """The reference spec and repository pass every rule; load_spec returns the typed spec."""
    project.write(valid_spec())
    spec = load_spec(project.spec)
    assert [m.name for m in spec.models] == ["half_plus_two", "half_plus_three"]


def test_duplicate_model_names(project: Project) -> None:
    """Two models with one name are refused, naming the first one."""
    spec = valid_spec()
    model(spec, 1)["name"] = "half_plus_two"
    problem = only(project.problems(spec, check_disk=False))
    assert problem.yaml_path == "models[1].name"
    assert problem.message == "model name 'half_plus_two' is already used by models[0]"


def test_missing_model_directory(project: Project) -> None:
    """A model whose directory does not exist is reported with the directory and a hint."""
    spec = valid_spec()
    spec["models"].append({"name": "resnet"})
    problem = only(project.problems(spec))
    assert problem.yaml_path == "models[2]"
    assert problem.message == f"model directory {project.root / 'models' / 'resnet'} does not exist"
    assert problem.hint is not None and "invoke models" in problem.hint


def test_missing_model_directory_with_explicit_path_points_at_path(project: Project) -> None:
    """When `path` is written, the problem points at that line."""
    spec = valid_spec()
    spec["models"].append({"name": "resnet", "path": "vision/resnet"})
    assert only(project.problems(spec)).yaml_path == "models[2].path"


def test_missing_repository_is_one_problem(tmp_path: Path) -> None:
    """No model repository at all is one problem, not one per model."""
    problem = only(Project(tmp_path).problems(valid_spec()))
    assert problem.yaml_path == "model_repository"
    assert "does not exist" in problem.message


@pytest.mark.parametrize("name", ["v2", "1.5", "-3", "2a", "99999999999999999999"])
def test_non_numeric_version_directory_is_an_error(project: Project, name: str) -> None:
    """Version dirs TF Serving would silently ignore are errors with a rename hint."""
    project.version("half_plus_three", name)
    problem = only(project.problems(valid_spec()))
    assert problem.yaml_path == "models[1]"
    assert problem.message.startswith(f"version directory '{name}' in ")
    assert "silently ignore" in problem.message
    assert problem.hint is not None and "starting with '.'" in problem.hint


def test_hidden_staging_directories_and_files_are_ignored(project: Project) -> None:
    """Dot-named staging dirs and plain files next to versions are not problems."""
    project.version("half_plus_three", ".staging-2", saved_model=False)
    (project.root / "models" / "half_plus_three" / "README.md").write_text("notes\n")
    assert project.problems(valid_spec()) == []


def test_version_without_saved_model(project: Project) -> None:
    """A numbered directory without saved_model.pb would fail to load: reported."""
    project.version("half_plus_three", 2, saved_model=False)
    problem = only(project.problems(valid_spec()))
    assert problem.message.startswith("version 2 (")
    assert "has no saved_model.pb" in problem.message


def test_saved_model_pbtxt_counts(project: Project) -> None:
    """A text-format SavedModel (saved_model.pbtxt) is a SavedModel too."""
    directory = project.version("half_plus_three", 2, saved_model=False)
    (directory / "saved_model.pbtxt").write_text("saved_model_schema_version: 1\n")
    assert project.problems(valid_spec()) == []


def test_saved_model_directly_in_model_directory(project: Project) -> None:
    """A SavedModel exported without a version directory is explained."""
    (project.root / "models" / "half_plus_three" / "saved_model.pb").write_bytes(b"x")
    problem = only(project.problems(valid_spec()))
    assert "holds a SavedModel directly" in problem.message
    assert problem.hint is not None and problem.hint.endswith("half_plus_three/1")


def test_model_directory_without_versions(project: Project) -> None:
    """An empty model directory would make TF Serving wait forever: reported."""
    spec = valid_spec()
    spec["models"].append({"name": "empty"})
    (project.root / "models" / "empty").mkdir()
    problem = only(project.problems(spec))
    assert "has no numbered version directory" in problem.message


def test_leading_zeros_collide(project: Project) -> None:
    """`1` and `001` are both version 1 for TF Serving: reported."""
    project.version("half_plus_two", "001")
    problem = only(project.problems(valid_spec()))
    assert "'001' and '1'" in problem.message and "both version 1" in problem.message


def test_zero_padded_version_directories_are_versions(tmp_path: Path) -> None:
    """`00000001` and `0002` are versions 1 and 2: policies and labels by number validate."""
    project = Project(tmp_path)
    project.version("half_plus_two", "00000001")
    project.version("half_plus_two", "0002")
    project.version("half_plus_three", "01")
    assert project.problems(valid_spec()) == []


def test_a_label_on_a_missing_version_is_reported_despite_padded_names(tmp_path: Path) -> None:
    """Only `0002` on disk: version 1 (policy and label) is missing, found versions by number."""
    project = Project(tmp_path)
    project.version("half_plus_two", "0002")
    project.version("half_plus_three", "1")
    found = "\n".join(messages(project.problems(valid_spec())))
    assert "found: 2" in found


# -- policies and labels ----------------------------------------------------------------------


def test_specific_versions_must_exist(project: Project) -> None:
    """`specific` listing a version that is not on disk is reported at the list entry."""
    spec = valid_spec()
    model(spec)["policy"] = {"specific": [1, 2, 7]}
    problem = only(project.problems(spec))
    assert problem.yaml_path == "models[0].policy.specific[2]"
    assert problem.message == "version 7 of model 'half_plus_two' is not on disk (found: 1, 2)"


def test_specific_duplicates(project: Project) -> None:
    """A version listed twice in `specific` is reported (also without disk checks)."""
    spec = valid_spec()
    model(spec)["policy"] = {"specific": [1, 2, 1]}
    assert only(project.problems(spec, check_disk=False)).message == "version 1 is listed twice"


def test_label_on_missing_version(project: Project) -> None:
    """A label on a version that is not on disk is reported with the versions found."""
    spec = valid_spec()
    model(spec, 1)["labels"] = {"canary": 4}
    problem = only(project.problems(spec))
    assert problem.yaml_path == "models[1].labels.canary"
    assert problem.message == (
        "label 'canary' points at version 4 of model 'half_plus_three', which is not on disk "
        "(found: 1)"
    )


def test_label_on_version_the_latest_policy_drops(project: Project) -> None:
    """With `latest: 1` a label may only point at the newest version on disk."""
    project.version("half_plus_three", 2)
    spec = valid_spec()
    model(spec, 1)["labels"] = {"stable": 1}
    problem = only(project.problems(spec))
    assert problem.message == (
        "label 'stable' points at version 1, which the policy latest: 1 does not serve (served: 2)"
    )


def test_label_with_latest_two_keeps_both(project: Project) -> None:
    """With `latest: 2` labels may point at either of the two newest versions."""
    project.version("half_plus_three", 2)
    spec = valid_spec()
    model(spec, 1)["policy"] = {"latest": 2}
    model(spec, 1)["labels"] = {"stable": 1, "canary": 2}
    assert project.problems(spec) == []


def test_label_with_all_policy(project: Project) -> None:
    """With `all` every version on disk may be labelled, and only those."""
    spec = valid_spec()
    model(spec)["policy"] = {"all": True}
    assert project.problems(spec) == []
    model(spec)["labels"]["old"] = 0
    assert "not on disk" in only(project.problems(spec)).message


def test_label_outside_specific_without_disk(project: Project) -> None:
    """Without disk checks, a label must still be within a `specific` list."""
    spec = valid_spec()
    model(spec)["labels"]["canary"] = 3
    model(spec)["policy"] = {"specific": [1, 2]}
    problem = only(project.problems(spec, check_disk=False))
    assert "which the policy specific: [1, 2] does not serve" in problem.message


def test_check_disk_false_skips_the_repository(tmp_path: Path) -> None:
    """check_disk=False accepts a spec whose models do not exist yet."""
    spec = valid_spec()
    model(spec, 1)["labels"] = {"stable": 9}  # latest: unknown without the disk, so not checked
    assert Project(tmp_path).problems(spec, check_disk=False) == []


def test_inventory_and_summary(project: Project) -> None:
    """The report counts the versions found and served and the labels, for `invoke validate`."""
    project.write(valid_spec())
    report = check_spec(project.spec)
    assert [(i.name, i.on_disk, i.served) for i in report.inventory] == [
        ("half_plus_two", (1, 2), (1, 2)),
        ("half_plus_three", (1,), (1,)),
    ]
    assert (
        report.summary() == f"{project.spec}: OK, 2 models, 3 versions found (3 served), 2 labels"
    )


# -- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("repository", ["../../elsewhere", "../..", "models/../../../x"])
def test_repository_escaping_the_project(project: Project, repository: str) -> None:
    """A relative model_repository leaving the project is refused (even without disk checks)."""
    spec = valid_spec()
    spec["model_repository"] = repository
    problem = only(project.problems(spec, check_disk=False))
    assert problem.yaml_path == "model_repository"
    assert problem.message == f"'{repository}' leaves the project directory {project.root}"


def test_absolute_repository_is_allowed(
    project: Project, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Absolute paths are the explicit way to use a repository elsewhere."""
    elsewhere = tmp_path_factory.mktemp("repo")
    for name, version in (("half_plus_two", 1), ("half_plus_two", 2), ("half_plus_three", 1)):
        (elsewhere / name / str(version)).mkdir(parents=True)
        (elsewhere / name / str(version) / "saved_model.pb").write_bytes(b"x")
    spec = valid_spec()
    spec["model_repository"] = str(elsewhere)
    assert project.problems(spec) == []


@pytest.mark.parametrize("path", ["../other", "a/../../b", ".", ""])
def test_model_path_must_stay_inside_the_repository(project: Project, path: str) -> None:
    """A relative model path must name a folder inside the repository (it is mounted there)."""
    spec = valid_spec()
    model(spec, 1)["path"] = path
    problem = only(project.problems(spec, check_disk=False))
    assert problem.yaml_path == "models[1].path"
    assert "is not a directory inside the model repository" in problem.message


def test_model_path_in_a_subfolder(project: Project) -> None:
    """Models may live in sub-folders of the repository."""
    (project.root / "models" / "half_plus_three").rename(project.root / "models" / "h3")
    (project.root / "models" / "team").mkdir()
    (project.root / "models" / "h3").rename(project.root / "models" / "team" / "h3")
    spec = valid_spec()
    model(spec, 1)["path"] = "team/h3"
    assert project.problems(spec) == []


def test_absolute_model_paths_must_not_share_a_mount(
    project: Project, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An absolute model is mounted at /models/<name>; it must not shadow another model's folder."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "1").mkdir()
    (outside / "1" / "saved_model.pb").write_bytes(b"x")
    spec = valid_spec()
    spec["models"].append({"name": "half_plus_three_copy", "path": str(outside)})
    assert project.problems(spec) == []
    spec["models"][2]["name"] = "x"
    spec["models"][1]["path"] = "x"
    (project.root / "models" / "half_plus_three").rename(project.root / "models" / "x")
    problem = only(project.problems(spec))
    assert problem.yaml_path == "models[2].path"
    assert "would appear in the server at /models/x" in problem.message


# -- samples ----------------------------------------------------------------------------------


def sample_spec(sample: dict[str, Any]) -> dict[str, Any]:
    spec = valid_spec()
    model(spec)["samples"] = [sample]
    return spec


def test_sample_body_file_is_read_and_checked(project: Project) -> None:
    """A body_file relative to the spec holding a JSON request is valid."""
    (project.root / "config" / "samples").mkdir(parents=True)
    (project.root / "config" / "samples" / "p.json").write_text('{"instances": [1.0]}')
    assert project.problems(sample_spec({"body_file": "samples/p.json"})) == []


def test_sample_body_file_missing(project: Project) -> None:
    """A missing body_file is reported (only with disk checks)."""
    spec = sample_spec({"body_file": "samples/none.json"})
    problem = only(project.problems(spec))
    assert problem.yaml_path == "models[0].samples[0].body_file"
    assert problem.message.startswith("sample file ") and "does not exist" in problem.message
    assert project.problems(spec, check_disk=False) == []


def test_sample_body_file_not_json(project: Project) -> None:
    """A body_file that is not JSON names the JSON error and its line."""
    (project.root / "config").mkdir(parents=True, exist_ok=True)
    (project.root / "config" / "p.json").write_text('{"instances":\n [1.0,,]}')
    problem = only(project.problems(sample_spec({"body_file": "p.json"})))
    assert "is not valid JSON" in problem.message and "(line 2)" in problem.message


def test_sample_body_file_must_hold_an_object(project: Project) -> None:
    """A JSON list is not a request body."""
    (project.root / "config").mkdir(parents=True, exist_ok=True)
    (project.root / "config" / "p.json").write_text("[1, 2]")
    problem = only(project.problems(sample_spec({"body_file": "p.json"})))
    assert problem.message.endswith("must hold a JSON object, not a list")


@pytest.mark.parametrize("name", ["../../etc/passwd", "../../../x.json"])
def test_sample_body_file_escaping_the_project(project: Project, name: str) -> None:
    """A relative body_file leaving the project is refused before it is read."""
    problem = only(project.problems(sample_spec({"body_file": name}), check_disk=False))
    assert "leaves the project directory" in problem.message


def test_sample_body_file_inside_the_project_but_outside_config(project: Project) -> None:
    """`../data/x.json` from config/ stays inside the project and is fine."""
    (project.root / "data").mkdir()
    (project.root / "data" / "x.json").write_text(json.dumps({"inputs": {"x": [1.0]}}))
    assert project.problems(sample_spec({"body_file": "../data/x.json"})) == []


@pytest.mark.parametrize(
    ("sample", "fragment"),
    [
        ({"body": {"instances": [1], "inputs": [1]}}, "got instances and inputs"),
        ({"body": {"x": [1]}}, "got neither"),
        ({"method": "regress", "body": {"instances": [1]}}, "needs a non-empty 'examples' list"),
        ({"method": "classify", "body": {"examples": [1.0]}}, "must be a mapping of feature"),
        (
            {"signature_name": "a", "body": {"signature_name": "b", "instances": [1]}},
            "contradicts",
        ),
    ],
)
def test_sample_body_shape(project: Project, sample: dict[str, Any], fragment: str) -> None:
    """Sample bodies have the shape TF Serving's REST API needs for their method."""
    problem = only(project.problems(sample_spec(sample), check_disk=False))
    assert fragment in problem.message
    assert problem.yaml_path == "models[0].samples[0].body"


def test_duplicate_sample_names(project: Project) -> None:
    """Samples are referred to by name, so names are unique within a model."""
    spec = valid_spec()
    model(spec)["samples"] = [{"body": {"instances": [1]}}, {"body": {"instances": [2]}}]
    problem = only(project.problems(spec, check_disk=False))
    assert problem.yaml_path == "models[0].samples[1].name"


# -- serving ----------------------------------------------------------------------------------


def serving(project: Project, check_disk: bool = False, **fields: Any) -> list[Any]:
    spec = valid_spec()
    spec["serving"].update(fields)
    return project.problems(spec, check_disk=check_disk)


def test_ports_must_differ(project: Project) -> None:
    """gRPC and REST on one port is refused."""
    problem = only(serving(project, grpc_port=9000, rest_port=9000))
    assert (problem.yaml_path, problem.message) == (
        "serving.rest_port",
        "grpc_port and rest_port are both 9000",
    )


def without_door(project: Project, **fields: Any) -> list[Any]:
    """Problems of a spec whose replicas publish their own ports (frontend.enabled: false)."""
    spec = valid_spec()
    spec["serving"].update(fields)
    spec["frontend"] = {"enabled": False}
    return project.problems(spec, check_disk=False)


def test_replica_port_ranges_must_not_overlap(project: Project) -> None:
    """Door off: N replicas publish grpc_port..+N-1 and rest_port..+N-1; these must not overlap."""
    problem = only(without_door(project, replicas=3, grpc_port=8500, rest_port=8502))
    assert problem.yaml_path == "serving.rest_port" and "overlap" in problem.message
    assert without_door(project, replicas=3, grpc_port=8500, rest_port=8600) == []


def test_replica_ports_stay_below_65536(project: Project) -> None:
    """Door off: the replicas' port ranges must fit in the port space."""
    problem = only(without_door(project, replicas=4, grpc_port=65534, rest_port=8501))
    assert problem.yaml_path == "serving.grpc_port" and "past 65535" in problem.message


def test_door_publishes_one_port_of_each_kind(project: Project) -> None:
    """Door on (auto with replicas > 1): adjacent ports are fine, the door owns one of each."""
    assert serving(project, replicas=3, grpc_port=8500, rest_port=8501) == []
    assert serving(project, replicas=4, grpc_port=65534, rest_port=65535) == []


def test_door_still_needs_two_different_ports(project: Project) -> None:
    """Door on: gRPC and REST on one published port is still refused."""
    problem = only(serving(project, replicas=2, grpc_port=9000, rest_port=9000))
    assert problem.yaml_path == "serving.rest_port" and "both 9000" in problem.message


@pytest.mark.parametrize("address", ["localhost", "127.0.0", "0.0.0.0:80"])
def test_bind_address_must_be_an_ip(project: Project, address: str) -> None:
    """Docker publishes on IP addresses only."""
    assert "is not an IP address" in only(serving(project, bind_address=address)).message


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0", "::1", "192.168.1.10"])
def test_ip_bind_addresses_are_fine(project: Project, address: str) -> None:
    """IPv4 and IPv6 literals are accepted."""
    assert serving(project, bind_address=address) == []


@pytest.mark.parametrize("user", ["root", "0", "0:0", "root:root"])
def test_root_user_is_refused(project: Project, user: str) -> None:
    """The server never runs as root."""
    assert only(serving(project, user=user)).message == "the server must not run as root"


@pytest.mark.parametrize("image", ["Tfstack/Runtime", "a b", "x:", "registry:5000/"])
def test_bad_image_reference(project: Project, image: str) -> None:
    """Image references Docker would refuse are caught here."""
    assert "not a valid image reference" in only(serving(project, image=image)).message


@pytest.mark.parametrize(
    "image", ["tfstack/serving-runtime:latest", "localhost:5000/a/b:1.2", "tensorflow/serving"]
)
def test_good_image_references(project: Project, image: str) -> None:
    """Ordinary references pass."""
    assert serving(project, image=image) == []


def test_memory_below_docker_minimum(project: Project) -> None:
    """Docker refuses memory limits below 6 MiB."""
    problem = only(serving(project, resources={"memory": "4m"}))
    assert problem.yaml_path == "serving.resources.memory"
    assert serving(project, resources={"memory": "1.5g", "cpus": 0.5}) == []


def test_extra_flags_must_not_override_spec_fields(project: Project) -> None:
    """Flags tfstack derives from the spec cannot be overridden through extra_flags."""
    problems = serving(project, extra_flags=["--port=9000", "--enable_batching", "--foo=1", "x"])
    assert [p.yaml_path for p in problems] == [
        "serving.extra_flags[0]",
        "serving.extra_flags[1]",
        "serving.extra_flags[3]",
    ]
    assert problems[0].message.startswith("--port is set by tfstack from serving.grpc_port")


def test_session_parallelism_with_intra_inter_threads(project: Project) -> None:
    """--tensorflow_session_parallelism and intra/inter-op threads cannot be combined."""
    flags = ["--tensorflow_session_parallelism=4"]
    problem = only(serving(project, extra_flags=flags, intra_op_threads=2, inter_op_threads=2))
    assert problem.yaml_path == "serving.intra_op_threads"
    assert serving(project, extra_flags=flags) == []
    assert serving(project, intra_op_threads=2, inter_op_threads=2) == []


# -- batching and monitoring ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "path", "fragment"),
    [
        ([8, 8, 32], "batching.allowed_batch_sizes[1]", "must increase: 8 follows 8"),
        ([16, 8, 32], "batching.allowed_batch_sizes[1]", "must increase: 8 follows 16"),
        ([8, 16], "batching.allowed_batch_sizes[1]", "(16) must equal max_batch_size (32)"),
    ],
)
def test_allowed_batch_sizes(project: Project, sizes: list[int], path: str, fragment: str) -> None:
    """allowed_batch_sizes increase strictly and end at max_batch_size."""
    spec = valid_spec()
    spec["batching"]["allowed_batch_sizes"] = sizes
    problem = only(project.problems(spec, check_disk=False))
    assert problem.yaml_path == path and fragment in problem.message


def test_empty_allowed_batch_sizes_are_fine(project: Project) -> None:
    """No allowed_batch_sizes means any size up to max_batch_size."""
    spec = valid_spec()
    spec["batching"]["allowed_batch_sizes"] = []
    assert project.problems(spec, check_disk=False) == []


@pytest.mark.parametrize("path", ["/v1/models/metrics", "/v1", "/", "/a/../b", "/a//b"])
def test_monitoring_path(project: Project, path: str) -> None:
    """The metrics path must not collide with the REST API nor be ambiguous."""
    spec = valid_spec()
    spec["monitoring"]["path"] = path
    assert only(project.problems(spec, check_disk=False)).yaml_path == "monitoring.path"


# -- everything at once -----------------------------------------------------------------------


def test_every_semantic_problem_is_reported(project: Project) -> None:
    """Several independent mistakes are all reported by one load_spec call."""
    spec = valid_spec()
    model(spec, 1)["name"] = "half_plus_two"
    spec["serving"]["rest_port"] = 8500
    spec["batching"]["allowed_batch_sizes"] = [64]
    spec["monitoring"]["path"] = "/v1/x"
    project.write(spec)
    with pytest.raises(SpecError) as caught:
        load_spec(project.spec, check_disk=False)
    assert len(caught.value.problems) == 4
    text = str(caught.value)
    assert text.startswith("invalid stack spec: 4 problems\n  - ")
    assert all(m in text for m in messages(caught.value.problems))


# -- hostile paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "loc"),
    [
        ("model_repository", "model_repository"),
        ("model_path", "models[1].path"),
        ("absolute_model_path", "models[1].path"),
        ("body_file", "models[0].samples[0].body_file"),
    ],
)
def test_nul_characters_in_paths(project: Project, field: str, loc: str) -> None:
    """A "\\0" escape in a path is a problem, not a ValueError from the file system."""
    spec = valid_spec()
    if field == "model_repository":
        spec["model_repository"] = "../mod\0els"
    elif field == "model_path":
        model(spec, 1)["path"] = "a\0b"
    elif field == "absolute_model_path":
        model(spec, 1)["path"] = "/a\0b"
    else:
        model(spec)["samples"] = [{"body_file": "samples/\0.json"}]
    problem = only(project.problems(spec))
    assert (problem.yaml_path, problem.message) == (loc, "path contains a NUL character")


def test_nul_character_in_spec_path(tmp_path: Path) -> None:
    """Even the spec's own path may be hostile."""
    assert "cannot read the spec" in only(validate_spec(tmp_path / "a\0b.yaml")).message


def test_symlink_loop_as_model_directory(project: Project) -> None:
    """A model directory that is a symlink loop is reported, not raised."""
    link = project.root / "models" / "loop"
    link.symlink_to(link)
    spec = valid_spec()
    spec["models"].append({"name": "loop"})
    problem = only(project.problems(spec))
    assert problem.yaml_path == "models[2]"
    assert "loop" in problem.message


def test_symlink_loop_as_repository(tmp_path: Path) -> None:
    """A model repository that is a symlink loop is reported, not raised."""
    project = Project(tmp_path)
    (tmp_path / "models").symlink_to(tmp_path / "models")
    problem = only(project.problems(valid_spec()))
    assert problem.yaml_path == "model_repository"
