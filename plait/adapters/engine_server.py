"""The engine's own foolscap object: how the controller drives one engine.

:class:`FoolscapEngine` publishes an engine (an
:class:`~plait.interfaces.engine.IEngineServer`) as
:class:`~plait.interfaces.engine.RIEngine`.  It only delegates: each
command is handed to the engine, which runs it in its main thread, and the
Deferred fires with the reply ``(ok, payload)``.  The engine's command
channel serves the same methods, checked against the same interface, by
calling the engine's ``call`` directly.
"""

from __future__ import annotations

from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from zope.interface import implementer

from plait.interfaces.engine import IEngineServer, RIEngine

#: The RIEngine methods that are commands (run in the engine's main thread).
COMMANDS = tuple(name for name in RIEngine.names()
                 if name not in ("kill", "ping", "skip_tasks", "send_signal"))


def _command(name: str) -> Any:
    argnames = RIEngine[name].argumentNames

    def remote_method(self: FoolscapEngine, *args: Any, **kwargs: Any) -> defer.Deferred:
        for argname in argnames[len(args):]:  # foolscap callers may name arguments
            if argname not in kwargs:
                break
            args += (kwargs.pop(argname),)
        if kwargs:
            raise TypeError(f"{name}() got unexpected arguments: {', '.join(sorted(kwargs))}")
        return self.engine.submit(name, args)

    remote_method.__name__ = f"remote_{name}"
    remote_method.__doc__ = f"Hand :meth:`RIEngine.{name}` to the engine's main thread."
    return remote_method


# mypy-zope looks for the RI methods by name; foolscap calls remote_<name> ones
@implementer(RIEngine)
class FoolscapEngine(Referenceable):  # type: ignore[misc]
    """Publishes an :class:`IEngineServer` as :class:`RIEngine`."""

    def __init__(self, engine: IEngineServer):
        self.engine = engine

    for _name in COMMANDS:
        locals()[f"remote_{_name}"] = _command(_name)
    del _name

    def remote_kill(self) -> None:
        """Exit now, even in the middle of user code (after answering)."""
        self.engine.kill()

    def remote_ping(self) -> bool:
        return True

    def remote_skip_tasks(self, taskids: list[int]) -> None:
        """Skip aborted tasks of the batches held (in this, the reactor thread)."""
        self.engine.skip_tasks(taskids)

    def remote_send_signal(self, signum: int) -> None:
        """Signal the engine process now (in this, the reactor thread)."""
        self.engine.send_signal(signum)
