"""What the status page shows: the engines, their queues and the task rate.

A :class:`StatusService` takes one :meth:`~StatusService.snapshot` a second
(O(engines + tasks on engines), never O(tasks recorded)), keeps the number
of tasks finished in each of the last :data:`WINDOW` seconds, and hands each
snapshot to its subscribers (the page's live streams): however many pages
are open, the scheduler pays for one snapshot a second.  It knows nothing
of HTTP (:mod:`plait.adapters.web` serves it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as _twisted_reactor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

reactor: Any = _twisted_reactor  # provides every IReactor* interface; typed by Twisted as a bare protocol

#: Seconds of task rate kept (and shown).
WINDOW = 300
#: Seconds between two snapshots.
EVERY = 1.0

log = Logger()


class StatusService:
    """Snapshots of ``registry`` (an IEngineRegistry) and ``tasks`` (the
    TaskController), one every :data:`EVERY` seconds once started."""

    def __init__(self, registry: Any, tasks: Any, clock: Any = None):
        self.registry = registry
        self.tasks = tasks
        self.clock = clock or reactor
        self._done: deque[tuple[float, int]] = deque(maxlen=WINDOW + 1)  # (time, finished)
        self._subscribers: list[Callable[[dict], None]] = []
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self.last: dict | None = None
        registry.add_observer(self)

    def start(self) -> None:
        self._loop.start(EVERY, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    # -- engines joining or leaving: a snapshot at once ------------------------------------
    def engine_added(self, engine_id: int) -> None:
        if self._loop.running:  # (a snapshot now; the rate keeps its seconds)
            self.clock.callLater(0, self._publish)

    engine_removed = engine_added

    def properties_changed(self, engine_id: int) -> None:
        pass

    # -- snapshots ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain data: ``engines`` (id, uuid, state, running, queue, completed),
        ``tasks`` (how many in each state), ``unassigned``, ``completed`` (all
        engines), ``rate`` (tasks finished in each of the last seconds, oldest
        first) and ``tasks_per_second`` (over the last 10 s)."""
        status = self.tasks.engine_status()
        engines = []
        for engine_id in sorted(e for e in status if e != "unassigned"):
            item = status[engine_id]
            try:
                uuid = self.registry.get_engine(engine_id).uuid
            except KeyError:
                continue
            engines.append({
                "id": engine_id, "uuid": uuid,
                "state": "busy" if item["tasks"] or item["queue"] else "idle",
                "running": item["tasks"], "queue": item["queue"],
                "completed": item["completed"],
            })
        completed = sum(self.tasks.completed_counts().values())
        rate = [b - a for (_, a), (_, b) in zip(list(self._done)[:-1], list(self._done)[1:],
                                                strict=True)]
        recent = rate[-10:]
        return {
            "time": time.time(), "engines": engines, "engine_count": len(engines),
            "tasks": self.tasks.queue_status(), "unassigned": status["unassigned"],
            "completed": completed, "rate": rate,
            "tasks_per_second": sum(recent) / len(recent) if recent else 0.0,
        }

    def _tick(self) -> None:
        self._done.append((self.clock.seconds(), sum(self.tasks.completed_counts().values())))
        self._publish()

    def _publish(self) -> None:
        try:
            self.last = self.snapshot()
        except Exception:
            log.failure("could not take a status snapshot")
            return
        for subscriber in list(self._subscribers):
            try:
                subscriber(self.last)
            except Exception:
                log.failure("a status subscriber failed")

    def current(self) -> dict[str, Any]:
        """The last snapshot (one taken now if there is none yet)."""
        return self.last if self.last is not None else self.snapshot()

    def subscribe(self, subscriber: Callable[[dict], None]) -> Callable[[], None]:
        """Call ``subscriber(snapshot)`` with each snapshot; returns the unsubscribe."""
        self._subscribers.append(subscriber)

        def unsubscribe(*_: Any) -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe
