"""The demo spec (config/stack.yaml), its sample files and the committed JSON Schema."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tfstack.spec import (
    LatestPolicy,
    SpecificPolicy,
    StackSpec,
    check_spec,
    json_schema,
    json_schema_text,
    load_spec,
)

from .specfixtures import Project


@pytest.fixture
def demo(project_root: Path) -> Path:
    return project_root / "config" / "stack.yaml"


@pytest.fixture
def demo_copy(tmp_path: Path, demo: Path) -> Project:
    """The demo spec and samples copied into a project whose repository holds the demo versions."""
    project = Project(tmp_path)
    shutil.copytree(demo.parent / "samples", tmp_path / "config" / "samples")
    shutil.copy(demo, project.spec)
    for model in ("half_plus_two", "half_plus_three", "resnet"):
        project.version(model, 1)
    return project


def test_demo_spec_is_valid_without_models(demo: Path) -> None:
    """The shipped spec passes the schema and every rule that does not need the models."""
    spec = load_spec(demo, check_disk=False)
    assert spec.project == "tfstack-demo"
    assert [m.name for m in spec.models] == ["half_plus_two", "half_plus_three", "resnet"]
    assert (spec.serving.bind_address, spec.serving.grpc_port, spec.serving.rest_port) == (
        "127.0.0.1",
        8500,
        8501,
    )
    assert spec.serving.image == "tfstack/serving-runtime:latest"
    assert spec.model_repository == "../models"


def test_demo_spec_is_valid_with_its_models(demo_copy: Project) -> None:
    """With version 1 of each demo model on disk, the demo spec passes every rule."""
    report = check_spec(demo_copy.spec)
    assert report.problems == []
    assert [(i.name, i.served, dict(i.labels)) for i in report.inventory] == [
        ("half_plus_two", (1,), {"stable": 1}),
        ("half_plus_three", (1,), {}),
        ("resnet", (1,), {}),
    ]


def test_demo_stable_label_survives_a_second_version(demo_copy: Project) -> None:
    """half_plus_two pins `specific: [1]`, so adding version 2 (as rollouts do) keeps it valid."""
    demo_copy.version("half_plus_two", 2)
    assert check_spec(demo_copy.spec).problems == []


def test_demo_samples_match_the_models_math(demo: Path) -> None:
    """Expected outputs are 0.5x+2 and 0.5x+3 of the inputs, so smoke tests can trust them."""
    spec = load_spec(demo, check_disk=False)
    by_name = {m.name: m for m in spec.models}
    for name, offset in (("half_plus_two", 2.0), ("half_plus_three", 3.0)):
        predict = next(s for s in by_name[name].samples if s.method == "predict")
        assert predict.body is not None and predict.expect is not None
        assert predict.expect["predictions"] == [
            0.5 * x + offset for x in predict.body["instances"]
        ]
    regress = next(s for s in by_name["half_plus_two"].samples if s.method == "regress")
    assert regress.signature_name == "regress_x_to_y"
    assert regress.body is not None and regress.expect is not None
    assert regress.expect["results"] == [0.5 * e["x"] + 2.0 for e in regress.body["examples"]]


def test_demo_policies_cover_each_kind_of_policy(demo: Path) -> None:
    """The demo shows a specific, a latest and a default policy (it doubles as documentation)."""
    spec = load_spec(demo, check_disk=False)
    assert isinstance(spec.models[0].policy, SpecificPolicy)
    assert isinstance(spec.models[1].policy, LatestPolicy)
    assert spec.models[2].policy == LatestPolicy(latest=1)  # the default when omitted


def test_resnet_sample_is_a_b64_jpeg_request(demo: Path) -> None:
    """The resnet sample holds one valid JPEG as {"b64": ...}, as TF Serving's REST API wants."""
    spec = load_spec(demo, check_disk=False)
    sample = spec.models[2].samples[0]
    assert sample.body_file is not None and sample.expect is None
    body = json.loads((demo.parent / sample.body_file).read_text())
    [instance] = body["instances"]
    jpeg = base64.b64decode(instance["b64"], validate=True)
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG"
        image.load()
        assert image.size[0] > 0


def test_demo_spec_points_editors_at_the_schema(demo: Path) -> None:
    """The first line lets YAML editors find the schema next to the spec."""
    first = demo.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=stack.schema.json"
    assert (demo.parent / "stack.schema.json").is_file()


def test_committed_schema_matches_the_model(demo: Path) -> None:
    """config/stack.schema.json is what `invoke schema` generates (run it after spec changes)."""
    committed = json.loads((demo.parent / "stack.schema.json").read_text())
    assert committed == json_schema()


def test_schema_text_is_deterministic() -> None:
    """The schema file is byte-stable: sorted keys, final newline."""
    assert json_schema_text() == json_schema_text()
    assert json_schema_text().endswith("}\n")


def test_schema_describes_required_fields_and_forbids_unknown_keys() -> None:
    """Editors complete and flag keys: project and models are required, others are refused."""
    schema = json_schema()
    assert set(schema["required"]) == {"project", "models"}
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["ModelSpec"]["additionalProperties"] is False


def test_from_yaml_is_load_spec(demo: Path) -> None:
    """StackSpec.from_yaml is the named constructor for load_spec."""
    assert StackSpec.from_yaml(demo, check_disk=False) == load_spec(demo, check_disk=False)
