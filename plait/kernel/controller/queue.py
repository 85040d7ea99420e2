"""The FIFO queue in front of one engine.

An engine runs one command at a time and blocks while user code runs.  The
controller therefore keeps a queue per engine: commands from every interface
(MultiEngine, Task, ...) are appended here and handed to the engine in
submission order.  To hide the network round trip between two commands, up
to ``window`` commands are in flight at once; the engine still runs them one
after another.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from plait.interfaces.engine import IEngine, IEngineQueue
from plait.wire.errors import EngineError, QueueCleared

Command = Callable[[IEngine], defer.Deferred]


class _Entry:
    __slots__ = ("command", "label", "deferred")

    def __init__(self, command: Command, label: Any):
        self.command = command
        self.label = label
        self.deferred: defer.Deferred = defer.Deferred()


def _plain(label: Any) -> Any:
    return str(label) if isinstance(label, str) else label


@implementer(IEngineQueue)
class EngineQueue:
    """Runs commands on one :class:`IEngine` in submission order.

    :meth:`submit` returns a Deferred firing with the command's result.  When
    the engine is lost, :meth:`fail_all` fails every waiting and running
    command with :class:`EngineError`; :meth:`clear` fails the waiting ones
    with :class:`QueueCleared`.
    """

    def __init__(self, engine: IEngine, window: int = 2):
        self.engine = engine
        self.window = window
        self._waiting: deque[_Entry] = deque()
        self._running: deque[_Entry] = deque()
        self._dead: EngineError | None = None

    def submit(self, command: Command, label: Any = None) -> defer.Deferred:
        entry = _Entry(command, label)
        if self._dead is not None:
            entry.deferred.errback(Failure(self._dead))
            return entry.deferred
        self._waiting.append(entry)
        self._pump()
        return entry.deferred

    def _pump(self) -> None:
        while self._waiting and len(self._running) < self.window and self._dead is None:
            entry = self._waiting.popleft()
            self._running.append(entry)
            try:
                d = entry.command(self.engine)
            except Exception:
                d = defer.fail()
            d.addBoth(self._finished, entry)

    def _finished(self, result: Any, entry: _Entry) -> None:
        if entry in self._running:
            self._running.remove(entry)
            if isinstance(result, Failure):
                entry.deferred.errback(result)
            else:
                entry.deferred.callback(result)
        elif isinstance(result, Failure):
            result.trap(Exception)  # already failed by fail_all: swallow the late error
        self._pump()

    def clear(self) -> int:
        """Drop waiting commands; returns how many were dropped."""
        dropped = list(self._waiting)
        self._waiting.clear()
        for entry in dropped:
            entry.deferred.errback(
                Failure(QueueCleared(f"command {entry.label!r} was cleared from the queue"))
            )
        return len(dropped)

    def fail_all(self, error: EngineError) -> None:
        """The engine is gone: fail everything, now and for later submissions."""
        self._dead = error
        entries = list(self._running) + list(self._waiting)
        self._running.clear()
        self._waiting.clear()
        for entry in entries:
            if not entry.deferred.called:
                entry.deferred.errback(Failure(error))

    def status(self) -> dict:
        """The labels of the waiting and running commands (plain data: a str
        subclass of a label is given as a str)."""
        return {
            "queue": [_plain(e.label) for e in self._waiting],
            "pending": [_plain(e.label) for e in self._running],
        }

    def waiting_labels(self) -> list[Any]:
        """The labels of the commands waiting, as submitted."""
        return [e.label for e in self._waiting]

    def __len__(self) -> int:
        return len(self._waiting) + len(self._running)
