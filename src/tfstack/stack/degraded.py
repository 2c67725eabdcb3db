"""Degraded start: models that fail to load at start are left out, the others serve.

The failures are parsed from the server's log, recorded in ``state/failed-models.json`` (``status``
shows them as END with the error) and the server is restarted with a config without them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format

from tfstack.core.files import write_files_atomically
from tfstack.stack.status import StartFailure

START_FAILURES = "state/failed-models.json"
"""Model versions that failed to load at the last start, left out of the server's config."""


_FAILED_START = re.compile(r"Failed to start server\. Error: (?P<error>.*)$")
_LOADING_FAILED = re.compile(
    r"Loading servable:? \{name: (?P<model>\S+) version: (?P<version>\d+)\} failed: (?P<error>.*)$"
)
_DUE_TO = re.compile(
    r"\{name: (?P<model>\S+) version: (?P<version>\d+)\} due to error: (?P<error>.*?)\}(?=, |\}|$)"
)


def parse_start_failures(lines: Sequence[str]) -> list[StartFailure] | None:
    """The model versions a server that failed to start could not load, from its log.

    None when the log has no ``Failed to start server. Error:`` line (it did not fail at start);
    [] when it failed for another reason (a flag, a config parse error, a port). Each servable's
    own ``Loading servable {name: m version: n} failed: ...`` line gives the full error (the last
    one wins: retries repeat it); the ``... due to error: ...`` list in the final line is used for
    servables without one. Texts of tfstack's runtime and of TF Serving (``Loading servable:``).
    """
    final: str | None = None
    per_servable: dict[tuple[str, int], str] = {}
    for line in lines:
        loading = _LOADING_FAILED.search(line)
        if loading is not None:
            key = (loading["model"], int(loading["version"]))
            per_servable[key] = loading["error"].strip()
            continue
        failed = _FAILED_START.search(line)
        if failed is not None:
            final = failed["error"].strip()
    if final is None:
        return None
    found = dict(per_servable)
    for match in _DUE_TO.finditer(final):
        found.setdefault((match["model"], int(match["version"])), match["error"].strip())
    if "did not become available" not in final:
        return []
    return [StartFailure(m, v, error) for (m, v), error in sorted(found.items())]


def config_without(desired_text: str, models: set[str], note: str) -> str:
    """``desired_text`` (models.config) without ``models``; a header comment says why."""
    from tensorflow_serving.config import model_server_config_pb2  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(desired_text, config)
    entries = list(config.model_config_list.config)
    del config.model_config_list.config[:]
    config.model_config_list.config.extend(e for e in entries if e.name not in models)
    header = [line for line in desired_text.splitlines() if line.lstrip().startswith("#")]
    body = str(text_format.MessageToString(config))
    return "\n".join([*header, f"# {note}", ""]) + body


def start_failures_path(root: Path) -> Path:
    return root / START_FAILURES


def read_start_failures(root: Path) -> list[StartFailure]:
    try:
        data = json.loads(start_failures_path(root).read_text(encoding="utf-8"))
        return [StartFailure.from_json(item) for item in data.get("failures", [])]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, AttributeError):
        return []  # a damaged record only loses the extra status detail


def record_start_failures(root: Path, failures: Sequence[StartFailure]) -> None:
    document = {"format": 1, "failures": [f.to_json() for f in failures]}
    write_files_atomically(root, {START_FAILURES: json.dumps(document, indent=2) + "\n"})


def forget_start_failures(root: Path) -> None:
    start_failures_path(root).unlink(missing_ok=True)
