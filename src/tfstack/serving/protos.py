"""TF Serving's protobuf modules without starting TensorFlow's runtime.

``tensorflow-serving-api``'s generated modules (``tensorflow_serving.apis.predict_pb2``...) import
TensorFlow's own generated modules (``tensorflow.core.framework.tensor_pb2``...). Those are plain
protobuf modules, but they live inside the ``tensorflow`` package, and a normal import of any
``tensorflow.*`` name first executes ``tensorflow/__init__.py``: the whole runtime (3-4 s per fresh
process). :func:`load_serving_protos` imports them without that:

1. It reads the import statements of the requested modules and, transitively, of every
   ``tensorflow.*`` and ``tensorflow_serving.*`` module they import (the generated files import
   with plain ``from tensorflow.core.framework import tensor_pb2`` statements).
2. It imports the *intermediate packages* of those names (``tensorflow.core``,
   ``tensorflow.core.framework``...) from the installed TensorFlow's own (empty) ``__init__.py``
   files, under their canonical names, and puts them in ``sys.modules``. ``tensorflow`` itself is
   never put there: Python resolves an import of a name whose package is already in
   ``sys.modules`` without importing that package's parents.
3. It imports the requested modules normally; the protobuf files load from TensorFlow's files under
   their canonical names, each once. TensorFlow's modules go first, in dependency order, so that
   each ``from tensorflow.x import y_pb2`` finds ``y_pb2`` already loaded (otherwise Python's
   ``__import__`` would import the top-level ``tensorflow`` to return it).
4. While it runs, a finder refuses the top-level ``tensorflow`` to this thread: if an import the
   reading in step 1 did not see would start the runtime half-way, every module loaded so far is
   dropped and the ordinary import runs instead.

A later ``import tensorflow`` in the same process executes the real package; its own imports of
``tensorflow.core...`` find the modules already loaded and reuse them, so every descriptor is
registered once and ``tf.make_tensor_proto`` returns instances of the same ``TensorProto`` class
(TensorFlow deletes its ``core`` and ``compiler`` attributes at the end of its ``__init__`` anyway,
so the missing parent attributes change nothing). If TensorFlow is already imported, or its files
are not where expected, or a package ``__init__.py`` is not an empty one, this falls back to the
ordinary import (correct, only slower; ``tests/unit/test_protos.py`` fails if that happens with
the installed versions).

One limit: another thread importing TensorFlow for the first time *while* step 2 runs might create
its own copy of an intermediate package object; call this from the main thread before starting
threads (``GrpcClient`` calls it on construction).
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.util
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

#: Everything tfstack's gRPC client uses.
SERVING_MODULES: tuple[str, ...] = (
    "tensorflow.core.framework.tensor_pb2",
    "tensorflow.core.protobuf.error_codes_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.model_management_pb2",
    "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow_serving.config.model_server_config_pb2",
)

_ROOTS = ("tensorflow", "tensorflow_serving")
_LOCK = threading.Lock()


def load_serving_protos(modules: Iterable[str] = SERVING_MODULES) -> None:
    """Import ``modules`` (canonical names) without executing ``tensorflow/__init__.py``.

    Idempotent and cheap once loaded. Falls back to ordinary imports (which start TensorFlow)
    whenever the fast path cannot be taken safely; import errors surface as usual.
    """
    names = tuple(modules)
    if all(name in sys.modules for name in names):
        return
    with _LOCK:
        if "tensorflow" not in sys.modules:
            roots = _installed_roots()
            plan = None if roots is None else _plan(names, roots)
            if plan is not None:
                _fast_path(*plan, names)
        for name in names:
            importlib.import_module(name)


class _WouldImportTensorflow(ImportError):
    """The fast path was about to execute ``tensorflow/__init__.py`` (an import it did not see)."""


class _RefuseTensorflow(importlib.abc.MetaPathFinder):
    """While the fast path runs, refuse the top-level ``tensorflow`` to the loading thread only."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == "tensorflow" and threading.get_ident() == self.thread:
            raise _WouldImportTensorflow(fullname)
        return None


def _fast_path(
    packages: list[tuple[str, Path]], tf_modules: list[str], names: tuple[str, ...]
) -> None:
    """Preload the packages, then the modules in order; if anything would still import the real
    ``tensorflow`` package mid-way, undo every module this added and leave it to the ordinary
    import (re-adding an identical file to the protobuf descriptor pool is accepted)."""
    before = set(sys.modules)
    guard = _RefuseTensorflow()
    sys.meta_path.insert(0, guard)
    try:
        _preload_packages(packages)
        for name in (*tf_modules, *names):
            importlib.import_module(name)
    except _WouldImportTensorflow:
        for name in set(sys.modules) - before:
            if name.split(".")[0] in _ROOTS:
                del sys.modules[name]
    finally:
        sys.meta_path.remove(guard)


def _installed_roots() -> dict[str, Path] | None:
    """The directories of the installed ``tensorflow`` and ``tensorflow_serving``, found without
    importing them; None if either is missing or not a plain directory package."""
    roots: dict[str, Path] = {}
    for root in _ROOTS:
        spec = importlib.util.find_spec(root)
        if spec is None or not spec.submodule_search_locations:
            return None
        roots[root] = Path(next(iter(spec.submodule_search_locations)))
    return roots


def _locate(name: str, roots: Mapping[str, Path]) -> Path | None:
    """The file behind module ``name``: ``.../__init__.py`` for a package, or None if none."""
    parts = name.split(".")
    base = roots[parts[0]].joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    module = base.with_suffix(".py")
    return module if module.is_file() else None


def _imports(source: Path) -> list[tuple[str, bool, bool]]:
    """``(module name, required, plain)`` for each absolute ``tensorflow*`` import in ``source``.

    ``from X import y`` requires ``X`` and may also mean the module ``X.y`` (or an attribute);
    ``plain`` marks ``import X.y`` statements, which bind (and so import) the top-level package.
    """
    tree = ast.parse(source.read_bytes(), filename=str(source))
    found: list[tuple[str, bool, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, True, True) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, True, False))
            found.extend(
                (f"{node.module}.{a.name}", False, False) for a in node.names if a.name != "*"
            )
    return [entry for entry in found if entry[0].split(".")[0] in _ROOTS]


def _plan(
    names: Iterable[str], roots: Mapping[str, Path]
) -> tuple[list[tuple[str, Path]], list[str]] | None:
    """What to import first: ``tensorflow.*`` packages (name, directory), parents first, and the
    ``tensorflow.*`` modules in dependency order (each after every module it imports).

    Found on disk, importing nothing. The order matters: ``from tensorflow.core.framework import
    tensor_pb2`` runs ``__import__("tensorflow.core.framework.tensor_pb2")`` -- which imports the
    top-level ``tensorflow`` -- unless ``tensor_pb2`` is already an attribute of its package.
    None when the fast path is not safe: a required module file missing (e.g. only ``.pyc``), a
    plain ``import tensorflow...`` in a TensorFlow module, or a package ``__init__.py`` that does
    anything at all.
    """
    packages: dict[str, Path] = {}
    ordered: list[str] = []
    done: set[str] = set()
    # Depth-first, post-order; generated protobuf imports follow .proto imports, which are acyclic.
    stack: list[tuple[str, bool, bool]] = [(name, True, False) for name in reversed(tuple(names))]
    while stack:
        name, required, expanded = stack.pop()
        if expanded:
            ordered.append(name)
            continue
        if name == "tensorflow":
            return None
        if name in done or name in sys.modules:
            continue
        parts = name.split(".")
        source = _locate(name, roots)
        if source is None:
            if required:
                return None
            continue  # ``from package import attribute``: nothing to load
        done.add(name)
        is_package = source.name == "__init__.py"
        if parts[0] == "tensorflow":
            for depth in range(2, len(parts) + (1 if is_package else 0)):
                packages[".".join(parts[:depth])] = roots["tensorflow"].joinpath(*parts[1:depth])
        if is_package:
            continue
        imports = _imports(source)
        if any(plain and dep.split(".")[0] == "tensorflow" for dep, _, plain in imports):
            return None  # ``import tensorflow.x`` binds, and so imports, ``tensorflow`` itself
        if parts[0] == "tensorflow":
            stack.append((name, True, True))
        stack.extend((dep, req, False) for dep, req, _ in reversed(imports))
    for directory in packages.values():
        init = directory / "__init__.py"
        if not init.is_file() or ast.parse(init.read_bytes()).body:
            return None
    return sorted(packages.items(), key=lambda item: item[0].count(".")), ordered


def _preload_packages(packages: list[tuple[str, Path]]) -> None:
    """Import each (empty) package under its canonical name, parents first; undo on failure."""
    added: list[str] = []
    try:
        for name, directory in packages:
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(
                name, directory / "__init__.py", submodule_search_locations=[str(directory)]
            )
            if spec is None or spec.loader is None:
                raise ImportError(f"no loader for {directory / '__init__.py'}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            added.append(name)
            spec.loader.exec_module(module)
            parent, _, child = name.rpartition(".")
            if parent in sys.modules:
                setattr(sys.modules[parent], child, module)
    except BaseException:
        for name in reversed(added):
            sys.modules.pop(name, None)
        raise
