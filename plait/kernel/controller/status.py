"""What the status page shows: the engines, their queues and the task rate.

A :class:`StatusService` takes one :meth:`~StatusService.snapshot` a second
(O(engines + tasks on engines), never O(tasks recorded)), and one every
:data:`PUBLISH_EVERY` seconds while someone watches; it keeps the number of
tasks finished in each of the last :data:`WINDOW` seconds, and hands each
snapshot to its subscribers (the page's live streams): however many pages
are open, the scheduler pays for two snapshots a second, and a change shows
on the pages within that half second (an engine joining or leaving, at
once).  It also keeps, as
tasks finish, the last :data:`STREAM` of them (the page's task stream: when
each ran, where, and how it ended) and the last :data:`FAILURES` failures
with what their engines said; :meth:`~StatusService.search` looks in the
hub's records.  It knows nothing of HTTP (:mod:`plait.adapters.web` serves
it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _twisted_reactor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

reactor: Any = _twisted_reactor  # provides every IReactor* interface; typed by Twisted as a bare protocol

#: Seconds of task rate kept (and shown).
WINDOW = 300
#: Seconds between two counts of the tasks finished (the rate's buckets).
EVERY = 1.0
#: Seconds between two snapshots while someone watches (a half of EVERY).
PUBLISH_EVERY = EVERY / 2
#: Finished tasks kept for the task stream, the newest of them a snapshot shows
#: (each snapshot goes to every open page twice a second: it stays small), and
#: the seconds of stream shown.
STREAM = 2000
STREAM_SHOWN = 400
STREAM_SECONDS = 60.0
#: Recent failures kept, with their text.
FAILURES = 20
#: Records a search returns at most, and the newest task ids it looks among.
SEARCH_LIMIT = 100
SEARCH_WINDOW = 100_000

log = Logger()


def _same(taskid: int) -> int:
    return taskid


class StatusService:
    """Snapshots of ``registry`` (an IEngineRegistry) and ``tasks`` (the
    TaskController), one every :data:`EVERY` seconds once started."""

    def __init__(self, registry: Any, tasks: Any, clock: Any = None, hub: Any = None):
        self.registry = registry
        self.tasks = tasks
        self.hub = hub
        self.clock = clock or reactor
        # (engine id, started, completed, status) of the tasks that finished last
        self._stream: deque[tuple[int | None, float, float, str]] = deque(maxlen=STREAM)
        self._failures: deque[dict] = deque(maxlen=FAILURES)
        self._newest = 0  # the highest task id seen finishing
        add = getattr(tasks, "add_finish_observer", None)
        if add is not None:
            add(self._finished)
        self._done: deque[tuple[float, int]] = deque(maxlen=WINDOW + 1)  # (time, finished)
        self._subscribers: list[Callable[[dict], None]] = []
        self._loop = LoopingCall.withCount(self._tick)
        self._loop.clock = self.clock
        self._halves = 0  # the loop's intervals so far (of PUBLISH_EVERY)
        self._counted = -1  # the last second whose count is in _done
        self.last: dict | None = None
        registry.add_observer(self)

    def detach(self) -> None:
        """Stop and stop observing the registry and the tasks (a page that will not
        serve costs the scheduler nothing)."""
        self.stop()
        self.registry.remove_observer(self)
        remove = getattr(self.tasks, "remove_finish_observer", None)
        if remove is not None:
            remove(self._finished)

    def start(self) -> None:
        self._loop.start(PUBLISH_EVERY, now=True)

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

    # -- tasks finishing ------------------------------------------------------------------
    def _finished(self, record: Any, meta: dict | None) -> None:
        completed = record.completed
        started = record.started if record.started is not None else completed
        self._stream.append((record.engineid, started, completed, record.status))
        if record.taskid > self._newest:
            self._newest = record.taskid
        if record.status != "succeeded":
            error = (meta or {}).get("error") if isinstance(meta, dict) else None
            self._failures.append({
                "id": record.taskid, "msg_id": self._msg_id(record.taskid),
                "engine": record.engineid, "status": record.status, "time": completed,
                "error": error if isinstance(error, str) else
                (f"{record.status} in the controller (no engine traceback): "
                 f"see get_result({self._msg_id(record.taskid)!r})"),
            })

    def _msg_id(self, taskid: int) -> str:
        return self.hub.msg_id(taskid) if self.hub is not None else str(taskid)

    def search(self, status: str | None = None, engine: int | None = None,
               msg_id: str | None = None) -> defer.Deferred:
        """A Deferred firing with the hub's records (plain data, newest first, at most
        :data:`SEARCH_LIMIT`) of the last :data:`SEARCH_WINDOW` tasks with that
        ``status``, run on that ``engine``, or the one of that ``msg_id``; with []
        without a hub.  ValueError (failing it) for a msg_id that is not one."""
        if self.hub is None:
            return defer.succeed([])
        query: dict[str, Any] = {}
        if status:
            query["status"] = status
        if engine is not None:
            query["engine_id"] = engine
        if msg_id:
            taskid = self.hub.taskid(msg_id)
            if taskid is None:
                return defer.fail(ValueError(f"{msg_id!r} is not a task id of this "
                                             f"controller"))
            return self._search({**query, "id": taskid})
        # (the hub's own count of ids, after a restart, until tasks finish here)
        newest = max(self._newest, int(getattr(self.hub, "first_free_id", 0) or 0))
        return self._search_back(query, newest)

    def _search_back(self, query: dict[str, Any], newest: int) -> defer.Deferred:
        """The newest matches among the last few hundred ids, or among the last
        :data:`SEARCH_WINDOW` when fewer than :data:`SEARCH_LIMIT` match there: the
        usual search reads a few hundred records, not the whole window, and a rare
        one asks twice (each query also goes through the hub's unfinished tasks)."""
        near = max(0, newest - 4 * SEARCH_LIMIT)
        whole = max(0, newest - SEARCH_WINDOW)
        d = self._search({**query, "id": {"$gte": near}})
        if near > whole:
            d.addCallback(lambda rows: rows if len(rows) >= SEARCH_LIMIT
                          else self._search({**query, "id": {"$gte": whole}}))
        return d

    def _search(self, query: dict[str, Any]) -> defer.Deferred:
        keys = ["msg_id", "status", "engine_id", "submitted", "started", "completed"]
        return self.hub.query(query, keys).addCallback(
            lambda rows: [dict(r) for r in rows[-SEARCH_LIMIT:][::-1]])

    # -- snapshots ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain data: ``engines`` (id, uuid, state, running, queue, completed),
        ``tasks`` (how many in each state), ``unassigned``, ``completed`` (all
        engines), ``rate`` (tasks finished in each of the last seconds, oldest
        first) and ``tasks_per_second`` (over the last 10 s); a published one
        also has ``snapshot_ms``, the milliseconds it took the controller."""
        # (the later generation's count: a direct view's requests wait in an
        # engine's queue; the task of a row is the first one handed to it)
        status = self.tasks.engine_status(name=_same)
        running_on: dict[int, list[int]] = getattr(self.tasks, "running_on", dict)()
        engines = []
        for engine_id in sorted(e for e in status if e != "unassigned"):
            item = status[engine_id]
            try:
                uuid = self.registry.get_engine(engine_id).uuid
                usage = self.registry.get_usage(engine_id) or {}
            except KeyError:
                continue
            running = sorted(running_on.get(engine_id, ()))
            engines.append({
                "id": engine_id, "uuid": uuid,
                "state": "busy" if item["tasks"] or item["queue"] else "idle",
                "running": item["tasks"], "queue": item["queue"],
                "completed": item["completed"],
                "task": self._msg_id(running[0]) if running else None,
                "host": usage.get("host"), "pid": usage.get("pid"),
                "memory": usage.get("memory"), "cpu": usage.get("cpu"),
            })
        now = self.clock.seconds()
        since = now - STREAM_SECONDS
        stream: list[list] = []
        for engine_id, started, completed, outcome in reversed(self._stream):
            if completed < since or len(stream) >= STREAM_SHOWN:
                break
            stream.append([engine_id, round(started, 3), round(completed, 3), outcome])
        stream.reverse()
        completed = sum(self.tasks.completed_counts().values())
        rate = [b - a for (_, a), (_, b) in zip(list(self._done)[:-1], list(self._done)[1:],
                                                strict=True)]
        recent = rate[-10:]
        return {
            "time": time.time(), "engines": engines, "engine_count": len(engines),
            "tasks": self.tasks.queue_status(), "unassigned": status["unassigned"],
            "completed": completed, "rate": rate,
            "tasks_per_second": sum(recent) / len(recent) if recent else 0.0,
            "stream": stream, "failures": list(self._failures)[::-1],
        }

    def _tick(self, intervals: int) -> None:
        """Every PUBLISH_EVERY seconds (``intervals`` of them since the last call,
        more than one when the reactor was late): each second, count the tasks
        finished and publish; in between, publish only to someone watching."""
        self._halves += intervals
        second = (self._halves - 1) // 2
        if second > self._counted:
            self._counted = second
            self._done.append((self.clock.seconds(),
                               sum(self.tasks.completed_counts().values())))
        elif not self._subscribers:
            return
        self._publish()

    def _publish(self) -> None:
        try:
            t0 = time.perf_counter()
            last = self.snapshot()
            last["snapshot_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
            self.last = last
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
