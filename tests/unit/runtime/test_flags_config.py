"""Command line and config files of tensorflow_model_server."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelserver.config import (
    ConfigParseError,
    load_model_server_config,
    load_monitoring_config,
    model_configs,
    single_model_config,
)
from modelserver.errors import ServingError
from modelserver.flags import FlagError, image_argv, parse_flags
from modelserver.server import session_options, startup_config


def test_both_flag_forms_and_last_one_wins() -> None:
    """--flag=value and --flag value both parse; a repeated flag takes its last value."""
    flags = parse_flags(["--port=9000", "--rest_api_port", "9001", "--port", "9002"])
    assert (flags.port, flags.rest_api_port) == (9002, 9001)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--enable_batching"], True),
        (["--enable_batching=true"], True),
        (["--enable_batching=false"], False),
        (["--enable_batching=1"], True),
        (["--enable_batching", "false"], False),
        ([], False),
    ],
)
def test_boolean_flags(args: list[str], expected: bool) -> None:
    """Booleans accept a bare flag, =true/false, =1/0 and a separate true/false word."""
    assert parse_flags(args).enable_batching is expected


def test_unknown_flags_are_kept_for_a_warning() -> None:
    """Unknown flags do not stop parsing (upstream warns and continues)."""
    flags = parse_flags(["--no_such_flag=3", "--port=1", "stray"])
    assert flags.port == 1
    assert flags.unknown == ["--no_such_flag=3", "stray"]


def test_bad_values_are_errors() -> None:
    """A value that does not parse is an error naming the flag."""
    with pytest.raises(FlagError, match="port"):
        parse_flags(["--port=abc"])
    with pytest.raises(FlagError, match="enable_batching"):
        parse_flags(["--enable_batching=maybe"])


def test_image_entrypoint_defaults() -> None:
    """MODEL_NAME/MODEL_BASE_PATH become leading flags that later arguments override."""
    argv = image_argv(["--model_name=x"], {"MODEL_NAME": "resnet", "MODEL_BASE_PATH": "/models"})
    assert argv == ["--model_name=resnet", "--model_base_path=/models/resnet", "--model_name=x"]
    assert parse_flags(argv).model_name == "x"
    assert image_argv(["--port=1"], {}) == ["--port=1"]


def test_single_model_from_flags() -> None:
    """Without a config file the model comes from --model_name/--model_base_path."""
    config = startup_config(parse_flags(["--model_name=m", "--model_base_path=/models/m"]))
    (model,) = model_configs(config)
    assert (model.name, model.base_path, model.model_platform) == ("m", "/models/m", "tensorflow")
    with pytest.raises(ServingError, match="model_base_path"):
        startup_config(parse_flags([]))


def test_config_file_parse_error_names_the_type(tmp_path: Path) -> None:
    """A bad config file reports protobuf's `Error parsing text-format ...ModelServerConfig`."""
    path = tmp_path / "models.config"
    path.write_text("model_config_list { config { nme: 'x' } }")
    with pytest.raises(ConfigParseError) as caught:
        load_model_server_config(str(path))
    assert caught.value.parser_line.startswith(
        "Error parsing text-format tensorflow.serving.ModelServerConfig: 1:"
    )


def test_config_file_with_labels_and_policy(tmp_path: Path) -> None:
    """The text proto is read with TF Serving's own ModelServerConfig."""
    path = tmp_path / "models.config"
    path.write_text(
        'model_config_list { config { name: "a" base_path: "/m/a" model_platform: "tensorflow"'
        " model_version_policy { specific { versions: 1 versions: 2 } }"
        ' version_labels { key: "stable" value: 1 } } }'
    )
    (model,) = model_configs(load_model_server_config(str(path)))
    assert list(model.model_version_policy.specific.versions) == [1, 2]
    assert dict(model.version_labels) == {"stable": 1}


def test_only_model_config_list_is_supported() -> None:
    """Configs other than model_config_list are refused like upstream's reload."""
    config = single_model_config("m", "/m")
    config.ClearField("model_config_list")
    with pytest.raises(ServingError, match="model_config_list"):
        model_configs(config)


def test_monitoring_config(tmp_path: Path) -> None:
    """prometheus_config enable/path parse with upstream's schema; path has a default."""
    path = tmp_path / "monitoring.config"
    path.write_text("prometheus_config { enable: true }")
    config = load_monitoring_config(str(path))
    assert (config.enable, config.path) == (True, "/monitoring/prometheus/metrics")
    path.write_text("prometheus_config { enabled: true }")
    with pytest.raises(ConfigParseError):
        load_monitoring_config(str(path))


def test_session_parallelism_flags() -> None:
    """intra/inter op threads pass through; all three parallelism flags together are refused."""
    options = session_options(
        parse_flags(["--tensorflow_intra_op_parallelism=2", "--tensorflow_inter_op_parallelism=3"])
    )
    assert (options.intra_op_parallelism, options.inter_op_parallelism) == (2, 3)
    assert (
        session_options(parse_flags(["--tensorflow_session_parallelism=4"])).intra_op_parallelism
        == 4
    )
    with pytest.raises(ServingError):
        session_options(
            parse_flags(
                [
                    "--tensorflow_intra_op_parallelism=2",
                    "--tensorflow_inter_op_parallelism=2",
                    "--tensorflow_session_parallelism=2",
                ]
            )
        )


def test_help_prints_the_flag_list_and_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """`tensorflow_model_server --help` lists flags and exits instead of starting a server."""
    from modelserver.main import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--rest_api_port=0" in out and "--model_config_file" in out
