"""Deprecated: the old home of the engine's interpreter.

Code running on an engine reaches its interpreter with
``from plait.kernel.engine import get_interpreter``; this module keeps the
old import working, with a DeprecationWarning, for one release.
"""

from __future__ import annotations

import warnings

from plait.kernel.engine.interpreter import Interpreter, get_interpreter

warnings.warn(
    "plait.kernel._interpreter is deprecated: use 'from plait.kernel.engine import "
    "get_interpreter'", DeprecationWarning, stacklevel=2,
)

__all__ = ["Interpreter", "get_interpreter"]
