"""The interpreter running user code in this process, for code that needs it.

Kept apart from :mod:`.interpreter` so that the helpers shipped to engines
(:mod:`.shipped`) reach the interpreter without importing it.
"""

from __future__ import annotations

from typing import Any

_current: Any = None
_running: list[Any] = []


def get_interpreter() -> Any:
    """The interpreter running user code in this process (or the last that did).

    User code on an engine reaches its engine with it, for instance to set
    ``get_interpreter().properties['RAM'] = 8``.  RuntimeError when no
    interpreter has run code here.
    """
    if _current is None:
        raise RuntimeError("no plait engine interpreter has run code in this process")
    return _current


def enter(interpreter: Any) -> None:
    """``interpreter`` starts running user code (calls nest)."""
    global _current
    _running.append(interpreter)
    _current = interpreter


def leave() -> None:
    """The interpreter that entered last stops; the one before it (if any) is current again."""
    global _current
    _running.pop()
    if _running:
        _current = _running[-1]
