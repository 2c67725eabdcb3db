"""Quoting filters for YAML, Compose and text protos: hostile strings round-trip exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tfstack.core import textproto
from tfstack.render import (
    COMPOSE_FILE,
    MODELS_CONFIG,
    compose_str,
    render_stack,
    yaml_key,
    yaml_str,
)
from tfstack.spec import StackSpec

HOSTILE = [
    "",
    "plain",
    'quote " inside',
    "single ' quote",
    "back\\slash\\",
    "new\nline: injected\n  key: value",
    "carriage\rreturn",
    "tab\there",
    "nul\x00byte",
    "bell\x07 and del\x7f and c1\x85",
    "line\u2028separator\u2029paragraph",
    "bom\ufeff",
    "# not a comment",
    "- not a list",
    "{not: a map}",
    "[not, a, list]",
    "&anchor *alias !tag",
    "yes",
    "no",
    "null",
    "~",
    "0x1F",
    "1e3",
    ".inf",
    "$HOME ${VAR} $$ $",
    'model_config_list { config { name: "x" } }',
    '" } injected_field: 1 { "',
    "ünïcødé ✓ 模型 🚀",
    "trailing space ",
    " leading space",
    "---\n...",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_yaml_str_round_trips(value: str) -> None:
    """yaml_str gives a scalar that YAML reads back as exactly the same string."""
    loaded = yaml.safe_load(f"key: {yaml_str(value)}\nother: 1\n")
    assert loaded == {"key": value, "other": 1}


@pytest.mark.parametrize("value", HOSTILE)
def test_compose_str_doubles_dollars_only(value: str) -> None:
    """compose_str is yaml_str with `$` doubled, so Compose sees a literal `$`."""
    loaded = yaml.safe_load(f"key: {compose_str(value)}\n")
    assert loaded == {"key": value.replace("$", "$$")}


@pytest.mark.parametrize("value", HOSTILE)
def test_proto_quote_round_trips_and_is_one_ascii_line(value: str) -> None:
    """textproto.quote gives a one-line ASCII literal that TF Serving's schema parses back."""
    literal = textproto.quote(value)
    assert literal.isascii() and "\n" not in literal and literal.isprintable()
    config: Any = textproto.parse(
        f"model_config_list {{ config {{ name: {literal} base_path: {literal} }} }}",
        textproto.model_server_config(),
    )
    (only,) = config.model_config_list.config
    assert only.name == value
    assert only.base_path == value


@pytest.mark.parametrize("value", [*HOSTILE, "serving", "org.tfstack.project", "yes", "null"])
def test_yaml_key_round_trips(value: str) -> None:
    """yaml_key leaves simple identifiers plain and quotes anything YAML could misread."""
    loaded = yaml.safe_load(f"{yaml_key(value)}: 1\n")
    assert loaded == {value.replace("$", "$$"): 1}
    if value in ("serving", "org.tfstack.project"):
        assert yaml_key(value) == value


@given(st.text())
def test_yaml_str_round_trips_any_text(value: str) -> None:
    """For any text (hypothesis), yaml_str round-trips through yaml.safe_load."""
    assert yaml.safe_load(f"k: {yaml_str(value)}") == {"k": value}


@given(st.text())
def test_proto_quote_round_trips_any_text(value: str) -> None:
    """For any text (hypothesis), the text-proto literal parses back to the same string."""
    message: Any = textproto.parse(
        f"prometheus_config {{ path: {textproto.quote(value)} }}", textproto.monitoring_config()
    )
    assert message.prometheus_config.path == value


def test_hostile_spec_values_cannot_inject_settings(tmp_path: Path) -> None:
    """Image, user, bind address, flags and model paths full of YAML/proto syntax stay values."""
    flag = '--x=1\n    privileged: true\n"'
    spec = StackSpec.model_validate(
        {
            "project": "p",
            "models": [{"name": "m", "path": 'weird" } base_path: "/etc\n#'}],
            "serving": {
                "image": "img:1\nprivileged: true",
                "user": '1000:1000"\ncap_add: [ALL]',
                "bind_address": "127.0.0.1\n    - 0.0.0.0",
                "extra_flags": [flag, "$(rm -rf /)"],
            },
        }
    )
    files = render_stack(spec, tmp_path / "config" / "stack.yaml", tmp_path)
    service = yaml.safe_load(files[COMPOSE_FILE])["services"]["serving"]
    assert "privileged" not in service and "cap_add" not in service
    assert service["image"] == "img:1\nprivileged: true"
    assert service["user"] == '1000:1000"\ncap_add: [ALL]'
    assert service["ports"][0]["host_ip"] == "127.0.0.1\n    - 0.0.0.0"
    assert service["command"][-2:] == [flag, "$$(rm -rf /)"]
    config: Any = textproto.parse(files[MODELS_CONFIG], textproto.model_server_config())
    (model,) = config.model_config_list.config
    assert model.base_path == '/models/weird" } base_path: "/etc\n#'
