"""The engine process: runs user code for the controller.

Code that runs *on* an engine may use one name of this package:
``from plait.kernel.engine import get_interpreter`` gives the interpreter
running it, through which it reaches the engine's ``properties``.
Everything else here is internal.  See :mod:`plait.kernel` for the layout
and its rules.

Modules:

``process``
    :class:`~plait.kernel.engine.process.Engine`: connect, register, serve
    commands until told to stop (the ``ipengine`` command's core).
``commands``
    One command from the controller: decode, run, encode (large values go
    to the bulk data port), sync changed properties.
``interpreter``
    The namespace and the commands that act on it (execute, push, pull...).
``taskrun``
    Running a batch of tasks, and values kept back from a batch reply.
``shipped``
    The only functions clients send to engines by reference (a wire contract).
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_interpreter"]


def __getattr__(name: str) -> Any:
    # Loaded on demand: a client imports ``shipped`` (the functions it sends)
    # without loading the interpreter.
    if name == "get_interpreter":
        from plait.kernel.engine.current import get_interpreter

        return get_interpreter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
