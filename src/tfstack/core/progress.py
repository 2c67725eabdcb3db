"""How library code reports progress: a callable taking one line of text (``print`` in tasks)."""

from __future__ import annotations

from collections.abc import Callable

Say = Callable[[str], None]
