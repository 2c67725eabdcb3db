"""tfstack's curated public API: ``__all__`` is exact (after httpx's test_exported_members)."""

from __future__ import annotations

import types

import tfstack


def test_all_lists_exactly_the_public_names() -> None:
    """Every public name tfstack exports is in __all__, once, and nothing else is."""
    public = {
        name
        for name, value in vars(tfstack).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(value, types.ModuleType)  # subpackages: reached by their path
    }
    assert len(tfstack.__all__) == len(set(tfstack.__all__))
    assert set(tfstack.__all__) == public


def test_every_exported_name_exists() -> None:
    """`from tfstack import *` cannot fail on a stale entry in __all__."""
    missing = [name for name in tfstack.__all__ if not hasattr(tfstack, name)]
    assert missing == []


def test_exports_come_from_tfstack() -> None:
    """The exported classes and functions are tfstack's own, not re-exported third-party names."""
    foreign = [
        name
        for name in tfstack.__all__
        if name != "__version__" and not getattr(tfstack, name).__module__.startswith("tfstack.")
    ]
    assert foreign == []
