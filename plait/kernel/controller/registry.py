"""The engine registry: which engines are connected, their ids and properties."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _twisted_reactor
from twisted.logger import Logger
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

from plait.interfaces.engine import IEngine, IEngineRegistry, IEnrollment
from plait.kernel.controller.queue import EngineQueue
from plait.wire.errors import EngineError, EnrollmentRefused, InvalidEngineID

reactor: Any = _twisted_reactor  # provides every IReactor* interface; typed by Twisted as a bare protocol


class _Record:
    __slots__ = ("engine", "uuid", "properties", "queue", "last_words", "usage", "_cpu")

    def __init__(self, engine: IEngine, uuid: str, properties: dict, queue: EngineQueue):
        self.engine = engine
        self.uuid = uuid
        self.properties = properties
        self.queue = queue
        self.last_words: str | None = None  # why it said it goes, if it did
        self.usage: dict | None = None  # what it last reported (see report_usage)
        self._cpu: tuple[float, float] | None = None  # (when, CPU seconds) reported last


def _load_ids(path: Path | None) -> tuple[int, list[int]]:
    """The file's next id, and the ids registered (or still awaited) when it was
    last written."""
    try:
        lines = path.read_text().split("\n") if path is not None else ["0"]
        registered = [int(i) for i in lines[1].split(",") if i] if len(lines) > 1 else []
        return max(0, int(lines[0].strip())), registered
    except (OSError, ValueError):
        return 0, []


@implementer(IEngineRegistry)
class EngineRegistry:
    """Engines by id.  Ids are 0, 1, 2 ... in registration order, never reused.

    With ``ids_path``, the next id is kept in that file.  An engine of the
    last run of the profile that joins again (``rejoin``) claims its id, and
    keeps it unless another engine holds it now; with ``restore`` (a
    controller started again after it died), ids go on from the last run's,
    so that no new engine takes the id of one that is still to come back.

    With ``enrollment`` (an :class:`IEnrollment`), only the engines it admits
    are registered.

    Observers (see :meth:`add_observer`) are told of registrations, departures
    and property changes; the task scheduler is one.
    """

    log = Logger()

    def __init__(self, queue_factory: Callable[[IEngine], EngineQueue] = EngineQueue,
                 ids_path: Path | None = None, restore: bool = False,
                 enrollment: IEnrollment | None = None):
        self._records: dict[int, _Record] = {}
        self.enrollment = enrollment
        self._save_call: Any = None  # the write of the ids file, due this turn
        self._by_uuid: dict[str, int] = {}  # the ids of the registered engines, by uuid
        self._ids_path = ids_path
        # ids below were given by the last run; those it had registered (or still
        # awaited) when it ended
        self._last_run, self.last_registered = _load_ids(ids_path)
        self._next_id = self._last_run if restore else 0
        # engines of the last run still to come back: named in the ids file as if
        # registered, so that a run that dies before they rejoin hands them on
        self._awaited: set[int] = set(self.last_registered) if restore else set()
        self._save_ids()
        self._observers: list[Any] = []
        self._waiters: list[tuple[int, defer.Deferred]] = []
        self._queue_factory = queue_factory

    # -- membership -------------------------------------------------------
    def register(self, engine: IEngine, uuid: str, properties: dict,
                 engine_id: int | None = None, rejoin: bool = False,
                 ran: list | tuple = (), secret: bytes = b"", member: bytes = b"") -> int:
        if self.enrollment is not None:
            try:
                self.enrollment.admit(secret, member, engine_id)
            except Exception as exc:
                self.log.warn("an engine was refused (uuid {uuid}): {e}", uuid=uuid, e=exc)
                raise
        old_id = self._by_uuid.get(uuid)
        if old_id is not None:  # the engine joined again before its loss was seen
            if self.enrollment is not None and old_id != engine_id:
                # (an admitted engine may not push another out by its uuid)
                raise EnrollmentRefused(f"engine {old_id} is registered with this uuid; "
                                        f"an engine joining again claims its own id")
            self.unregister(old_id, "the engine connected again")
        if rejoin and engine_id is not None and 0 <= engine_id < max(
                self._next_id, self._last_run) and engine_id not in self._records:
            # an engine joining again (its controller restarted, or the network was
            # cut) keeps its id when no other engine took it meanwhile
            self._next_id = max(self._next_id, engine_id + 1)
        elif not rejoin and engine_id is not None and 0 <= engine_id < self._next_id:
            # a restarted engine takes the id of the one it replaces (which may not
            # have been seen to go yet)
            self.unregister(engine_id, "replaced by its restarted engine")
        else:
            engine_id = self._next_id
            self._next_id += 1
        if self.enrollment is not None:  # (on disk before anyone hears of the engine)
            self.enrollment.bind(engine_id, member)
        engine.id = engine_id
        self._records[engine_id] = _Record(
            engine, uuid, dict(properties), self._queue_factory(engine)
        )
        self._by_uuid[uuid] = engine_id
        self._awaited.discard(engine_id)
        self._save_ids()
        self.log.info("engine {id} registered (uuid {uuid})", id=engine_id, uuid=uuid)
        if ran:
            self._notify("engine_ran", engine_id, list(ran))
        self._notify("engine_added", engine_id)
        self._wake_waiters()
        return engine_id

    def stop_awaiting(self, keep: Iterable[int] = ()) -> None:
        """The engines of the last run that have not rejoined (but those in
        ``keep``) are not waited for any more: the ids file stops naming them.
        Until then a controller started after this one dies waits for them as
        this one does (see :mod:`.restore`): an engine busy with a long task
        while its controllers died one after the other, each within the wait
        (:data:`~.restore.ALL_BACK_WAIT`), still finds its tasks."""
        keep = set(keep)
        if not self._awaited <= keep:
            self._awaited &= keep
            self._save_ids()

    def _save_ids(self) -> None:
        """Write the next id and the ids registered (or awaited) now (atomically: a
        controller killed now keeps the old file or the new one, and the process's writes
        survive its SIGKILL).  While the reactor runs, the changes of one reactor
        turn are written together at the start of the next, before it reads
        anything more: no client can have heard of an engine (and pinned a task to
        its id) before its id is in the file, and a burst of registrations costs
        one write, not one each."""
        if self._ids_path is None:
            return
        if reactor.running and isInIOThread():
            if self._save_call is None:
                self._save_call = reactor.callLater(0, self._write_ids)
            return
        self._write_ids()

    def _write_ids(self) -> None:
        self._save_call = None
        assert self._ids_path is not None
        tmp = self._ids_path.with_name(f".{self._ids_path.name}.{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                named = sorted(self._awaited.union(self._records))
                f.write(f"{self._next_id}\n{','.join(map(str, named))}\n")
            os.replace(tmp, self._ids_path)
        except OSError as exc:
            self.log.warn("could not record the next engine id in {path}: {e}",
                          path=str(self._ids_path), e=exc)

    def report_usage(self, engine_id: int, pid: int, host: str, rss: int, cpu: float) -> None:
        record = self._record(engine_id)
        now = time.monotonic()
        percent = None
        if record._cpu is not None and now > record._cpu[0]:
            percent = max(0.0, (cpu - record._cpu[1]) / (now - record._cpu[0]) * 100)
        record._cpu = (now, cpu)
        record.usage = {"pid": pid, "host": host, "memory": rss,
                        "cpu": None if percent is None else round(percent, 1)}

    def get_usage(self, engine_id: int) -> dict | None:
        return self._record(engine_id).usage

    def last_words(self, engine_id: int, reason: str) -> None:
        record = self._record(engine_id)
        record.last_words = reason
        record.engine.last_words = reason

    def unregister(self, engine_id: int, reason: str = "unregistered") -> None:
        record = self._records.pop(engine_id, None)
        if record is None:
            return
        if self._by_uuid.get(record.uuid) == engine_id:
            del self._by_uuid[record.uuid]
        self._save_ids()
        if record.last_words:
            reason = record.last_words
        self.log.info("engine {id} removed: {reason}", id=engine_id, reason=reason)
        record.queue.fail_all(EngineError(f"engine {engine_id} was lost: {reason}"))
        self._notify("engine_removed", engine_id)

    def get_ids(self) -> list[int]:
        return sorted(self._records)

    def __contains__(self, engine_id: int) -> bool:
        return engine_id in self._records

    def _record(self, engine_id: int) -> _Record:
        try:
            return self._records[engine_id]
        except (KeyError, TypeError):
            raise InvalidEngineID(
                f"no engine with id {engine_id!r}; registered engines: {self.get_ids()}"
            ) from None

    def get_engine(self, engine_id: int) -> IEngine:
        return self._record(engine_id).engine

    def get_queue(self, engine_id: int) -> EngineQueue:
        return self._record(engine_id).queue

    def get_uuid(self, engine_id: int) -> str:
        return self._record(engine_id).uuid

    # -- properties -------------------------------------------------------
    def get_properties(self, engine_id: int) -> dict:
        return self._record(engine_id).properties

    def set_properties(self, engine_id: int, properties: dict) -> None:
        self._record(engine_id).properties = dict(properties)
        self._notify("properties_changed", engine_id)

    def report_output(self, engine_id: int, chunks: list[tuple[int, str, str]]) -> None:
        """Engine ``engine_id`` says what its running tasks printed: observers with
        an ``engine_output(engine_id, chunks)`` hear of it."""
        self._record(engine_id)  # KeyError for an engine that is not registered
        for observer in list(self._observers):
            handler = getattr(observer, "engine_output", None)
            if handler is None:
                continue
            try:
                handler(engine_id, chunks)
            except Exception:
                self.log.failure("observer {obs!r} failed on engine_output", obs=observer)

    # -- observation ------------------------------------------------------
    def add_observer(self, observer: Any) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: Any) -> None:
        self._observers.remove(observer)

    def _notify(self, event: str, engine_id: int, *args: Any) -> None:
        for observer in list(self._observers):
            handler = getattr(observer, event, None)
            if handler is None:
                continue
            try:
                handler(engine_id, *args)
            except Exception:
                self.log.failure("observer {obs!r} failed on {event}", obs=observer, event=event)

    def wait_for_engines(self, n: int) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((n, d))
        self._wake_waiters()
        return d

    def _wake_waiters(self) -> None:
        ready = [(n, d) for n, d in self._waiters if len(self._records) >= n]
        for item in ready:
            self._waiters.remove(item)
            item[1].callback(self.get_ids())
