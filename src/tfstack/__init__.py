"""tfstack: TensorFlow Serving stacks as code.

The names below are the public API: what ``tasks.py`` and users need to load a spec, render it,
bring a stack up or down, roll out versions and talk to the server. Everything else lives in the
subpackages, layered top to bottom (``[tool.importlinter]`` in pyproject.toml): ``bench`` and
``selftest``; ``stack``; ``rollout``; ``build``, ``serving``, ``models``, ``kubernetes``;
``render``; ``spec`` and ``docker``; ``core``; ``errors``.
"""

from tfstack.errors import (
    BuildError,
    CommandFailed,
    EngineError,
    RenderError,
    RolloutError,
    SpecError,
    SpecProblem,
    StackError,
    TfstackError,
    UsageError,
    WriteError,
)
from tfstack.render import RenderReport, plan_render, render_stack, render_to_disk
from tfstack.rollout import Context as RolloutContext
from tfstack.rollout import Outcome, RolloutRequest, run_rollback, run_rollout
from tfstack.serving.client import (
    Endpoints,
    GrpcClient,
    ModelRef,
    RestClient,
    ServingRequestError,
)
from tfstack.spec import StackSpec, ValidationReport, check_spec, load_spec, validate_spec
from tfstack.stack.lifecycle import Lifecycle, UpReport
from tfstack.stack.predict import inspect, predict
from tfstack.stack.status import StackStatus

__version__ = "0.1.0"

__all__ = [
    "BuildError",
    "CommandFailed",
    "Endpoints",
    "EngineError",
    "GrpcClient",
    "Lifecycle",
    "ModelRef",
    "Outcome",
    "RenderError",
    "RenderReport",
    "RestClient",
    "RolloutContext",
    "RolloutError",
    "RolloutRequest",
    "ServingRequestError",
    "SpecError",
    "SpecProblem",
    "StackError",
    "StackSpec",
    "StackStatus",
    "TfstackError",
    "UpReport",
    "UsageError",
    "ValidationReport",
    "WriteError",
    "__version__",
    "check_spec",
    "inspect",
    "load_spec",
    "plan_render",
    "predict",
    "render_stack",
    "render_to_disk",
    "run_rollback",
    "run_rollout",
    "validate_spec",
]
