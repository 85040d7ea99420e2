"""How the task controller sends tasks to engines and reads what comes back.

Batches
-------
The tasks a scheduling pass assigns to one engine leave together: one
``run_task`` command carrying a :class:`~plait.wire.task.TaskBatch`,
queued on the engine's :class:`~plait.interfaces.engine.IEngineQueue`
beside MultiEngine commands.  A message costs far more than a tiny task, so
this is what makes tiny tasks fast; it costs nothing in balance, since the
scheduler's high water mark already decided these tasks go to this engine.
When the engine had nothing outstanding, the tasks are split into two
commands, so that the engine queue (which keeps two commands in flight)
has the second half already at the engine when the first half's reply
leaves, and the tasks that replace the first half arrive while the second
half runs: the engine never waits for the network.  A command carries at
most :data:`MAX_BATCH_TASKS` tasks and about :data:`MAX_BATCH_BYTES` bytes.

The payload is built when the queue hands the command to the engine, so a
task aborted while its command waited in the queue is left out.

The controller runs one scheduling pass after all the endings of a
command (``passed()``), not one per ending: the tasks a batch's results
release (graph dependents) then leave together, in one command, instead of
one command and one round trip each.

Endings
-------
Each task of a command ends its attempt with one :class:`Ended`:

``reply``
    The engine ran it: ``ok``, ``payload`` and ``seconds`` from the batch
    reply (a value kept back on the engine is fetched first, with a
    :class:`~plait.wire.task.StashFetch` command of its own).
``never_ran``
    The command never reached the engine (MultiEngine ``clear_queue``, or
    the engine was lost while it waited in the queue): not an attempt.
``failed``
    The attempt failed without a reply from user code: the engine lost
    while running it, or a reply that cannot be read (``payload`` says why).
``suspect``
    The engine was lost while the task was at the engine, but it may not
    have been the one running.  The controller decides (see
    :mod:`plait.kernel.controller.task`).

When an engine is lost, a command that carried a single task and was the
oldest of ours at the engine is presumed running: its task ends
``failed``.  Every other task at the engine ends ``suspect``, including
all the tasks of a batch: the engine runs them one after another and
answers only once, so any of them may have been the one running (and the
first ones may be done).  The controller's rule for suspects (run again
for free once, failed the second time) still catches a task that kills
its engines.

A value the engine kept back is fetched even if the fetch is cleared from
the engine's queue (a MultiEngine ``clear_queue``): the fetch is submitted
again, so the task does not fail for it and the value does not stay on the
engine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from plait.interfaces.engine import IEngineRegistry
from plait.wire.errors import EngineError, QueueCleared, RemoteFailure
from plait.wire.serialize import serialize
from plait.wire.task import PENDING, StashFetch, TaskBatch, decode_batch_reply

#: Most tasks in one command, and about the most bytes of their payloads.
MAX_BATCH_TASKS = 64
MAX_BATCH_BYTES = 512 << 10

log = Logger()


@dataclass(frozen=True)
class Ended:
    """How one attempt ended (see the module documentation)."""

    kind: str  # 'reply', 'never_ran', 'failed' or 'suspect'
    ok: bool = False
    payload: bytes = b""
    seconds: float | None = None
    engine_lost: bool = False  # the engine is gone (even if not unregistered yet)
    meta: dict | None = None  # a later-generation task's output and engine times


NEVER_RAN = Ended("never_ran")


def failure_payload(exc: BaseException, engine_id: int | None) -> bytes:
    """A serialized RemoteFailure for an error met outside user code."""
    return serialize(RemoteFailure.from_exception(exc, engine_id=engine_id, method="run_task"))


Entry = tuple[Any, int]  # (task, the attempt it belongs to)


class BatchLabel(str):
    """The label of a batch of tasks in an engine's command queue: its tasks are
    counted as tasks, not as commands (see ``TaskController.engine_status``)."""

    __slots__ = ()


class _Command:
    """One ``run_task`` command: its tasks, each with the attempt it belongs to."""

    __slots__ = ("engine_id", "entries", "sent", "at_engine")

    def __init__(self, engine_id: int, tasks: list[Any]):
        self.engine_id = engine_id
        self.entries: list[Entry] = [(task, task.attempt) for task in tasks]
        self.sent: list[Entry] = []  # the entries the payload carried
        self.at_engine = False

    def live(self) -> list[Entry]:
        """The entries whose task still waits for this very attempt."""
        return [(t, a) for t, a in self.entries if t.state == PENDING and t.attempt == a]

    def unsent(self) -> list[Entry]:
        sent = {id(t) for t, _ in self.sent}
        return [(t, a) for t, a in self.entries if id(t) not in sent]

    def label(self) -> BatchLabel:
        ids = [t.taskid for t, _ in self.entries]
        if len(ids) == 1:
            return BatchLabel(f"task {ids[0]}")
        return BatchLabel(f"tasks {ids[0]}..{ids[-1]} ({len(ids)})")


class Dispatcher:
    """Sends batches to engines; reports each attempt's end to the controller.

    ``ended(task, engine_id, attempt, Ended)`` is called exactly once for
    every task sent with :meth:`send` (its slot on the engine is free
    then); ``passed()`` once per finished command, after its tasks'
    endings (the controller then runs a scheduling pass).  ``now()`` gives
    the time stamped as a task's ``started``.
    """

    def __init__(self, registry: IEngineRegistry, now: Callable[[], float],
                 ended: Callable[[Any, int, int, Ended], None], passed: Callable[[], None]):
        self._registry = registry
        self._now = now
        self._ended = ended
        self._passed = passed
        self._at_engine: dict[int, deque[_Command]] = {}  # handed over, oldest first
        self._blamed: set[int] = set()  # lost engines whose running task was blamed
        self._settling = 0  # the commands whose endings are being reported

    # -- sending -----------------------------------------------------------------------
    def send(self, engine_id: int, tasks: list[Any], fresh: bool) -> None:
        """Queue ``tasks`` (already pending on ``engine_id``) in one or more commands.

        ``fresh``: the engine had nothing outstanding before these.  Raises
        KeyError when the engine is not registered (nothing is sent then).
        """
        queue = self._registry.get_queue(engine_id)
        groups = [tasks[: len(tasks) // 2], tasks[len(tasks) // 2:]] if (
            fresh and len(tasks) > 1) else [tasks]
        for group in groups:
            for part in _within_limits(group):
                command = _Command(engine_id, part)
                d = queue.submit(lambda engine, c=command: self._hand_over(c, engine),
                                 label=command.label())
                d.addBoth(self._done, command)

    def _hand_over(self, command: _Command, engine: Any) -> defer.Deferred:
        command.sent = command.live()
        if not command.sent:  # every task was aborted while the command waited
            return defer.succeed(None)
        now = self._now()
        for task, _ in command.sent:
            task.started = now
        command.at_engine = True
        self._at_engine.setdefault(command.engine_id, deque()).append(command)
        batch = TaskBatch(tuple(task.spec.payload for task, _ in command.sent),
                          tuple(task.taskid for task, _ in command.sent))
        return engine.run_task(batch.payload())

    # -- endings -----------------------------------------------------------------------
    def _done(self, result: Any, command: _Command) -> None:
        engine_id = command.engine_id
        blame_first = False
        if command.at_engine:
            line = self._at_engine.get(engine_id)
            oldest = bool(line and line[0] is command)
            if line and command in line:
                line.remove(command)
            if isinstance(result, Failure) and self._engine_gone(engine_id, result):
                blame_first = (oldest and len(command.sent) == 1
                               and engine_id not in self._blamed)
                if blame_first:
                    self._blamed.add(engine_id)
        self._settling += 1
        try:
            for entry in command.unsent():
                self._end(command, entry, NEVER_RAN)
            self._settle(command, result, blame_first)
        finally:
            self._settling -= 1
            self._passed()

    @property
    def settling(self) -> bool:
        """True while the endings of a command are being reported: ``passed()``
        follows them, so the controller may leave its scheduling pass to it."""
        return self._settling > 0

    def _engine_gone(self, engine_id: int, failure: Failure) -> bool:
        if failure.check(EngineError):
            return True
        return engine_id not in self._registry

    def _settle(self, command: _Command, result: Any, blame_first: bool) -> None:
        engine_id = command.engine_id
        sent = command.sent
        if isinstance(result, Failure):
            gone = self._engine_gone(engine_id, result)
            if not command.at_engine or result.check(QueueCleared):
                self._end_all(command, sent, Ended("never_ran", engine_lost=gone))
            elif gone:
                payload = failure_payload(result.value, engine_id)
                kind = "failed" if blame_first else "suspect"
                self._end_all(command, sent, Ended(kind, payload=payload, engine_lost=True))
            else:
                payload = failure_payload(result.value, engine_id)
                self._end_all(command, sent, Ended("failed", payload=payload))
            return
        if result is None:  # nothing was sent
            return
        try:
            ok, payload = result
            if not ok:  # the engine could not run the batch at all
                self._end_all(command, sent, Ended("failed", payload=payload))
                return
            items = decode_batch_reply(payload, len(sent))
        except Exception as exc:  # a malformed reply must not lose the tasks
            log.failure("bad batch reply from engine {engine}", engine=engine_id)
            payload = failure_payload(exc, engine_id)
            self._end_all(command, sent, Ended("failed", payload=payload))
            return
        for entry, (task_ok, data, seconds, stash, meta) in zip(sent, items, strict=True):
            if stash is None:
                assert data is not None  # decode_batch_reply: either data or a stash key
                self._end(command, entry, Ended("reply", task_ok, data, float(seconds),
                                                meta=meta))
            else:
                self._fetch(command, entry, task_ok, float(seconds), stash, meta)

    def _fetch(self, command: _Command, entry: Entry, ok: bool, seconds: float, key: bytes,
               meta: dict | None = None) -> None:
        """Fetch a value the engine kept back, then end the task with it.

        A fetch cleared from the engine's queue is submitted again: the
        value is still on the engine, and must neither be lost to the task
        nor left there.
        """
        engine_id = command.engine_id

        def fetched(reply: Any) -> Ended:
            fetch_ok, payload = reply
            if not fetch_ok:
                return Ended("failed", payload=payload, meta=meta)
            return Ended("reply", ok, payload, seconds, meta=meta)

        def lost(f: Failure) -> Ended | None:
            if f.check(QueueCleared):
                self._fetch(command, entry, ok, seconds, key, meta)
                return None
            return Ended("failed", payload=failure_payload(f.value, engine_id),
                         engine_lost=self._engine_gone(engine_id, f))

        def end(ended: Ended | None) -> None:
            if ended is not None:
                self._end(command, entry, ended)
                self._passed()

        try:
            queue = self._registry.get_queue(engine_id)
        except KeyError:
            gone = EngineError(f"engine {engine_id} was lost before its result was fetched")
            self._end(command, entry, Ended("failed", payload=failure_payload(gone, engine_id),
                                            engine_lost=True))
            self._passed()
            return
        d = queue.submit(lambda engine: engine.run_task(serialize(StashFetch(key))),
                         label=BatchLabel(f"task {entry[0].taskid} (result)"))
        d.addCallbacks(fetched, lost)
        d.addCallback(end)
        d.addErrback(lambda f: log.failure("fetching a task result failed", f))

    def _end(self, command: _Command, entry: Entry, ended: Ended) -> None:
        task, attempt = entry
        self._ended(task, command.engine_id, attempt, ended)

    def _end_all(self, command: _Command, entries: list[Entry], ended: Ended) -> None:
        for entry in entries:
            self._end(command, entry, ended)


def _within_limits(tasks: list[Any]) -> list[list[Any]]:
    """``tasks`` cut into runs of at most MAX_BATCH_TASKS and about MAX_BATCH_BYTES."""
    parts: list[list[Any]] = []
    current: list[Any] = []
    size = 0
    for task in tasks:
        n = len(task.spec.payload)
        if current and (len(current) >= MAX_BATCH_TASKS or size + n > MAX_BATCH_BYTES):
            parts.append(current)
            current, size = [], 0
        current.append(task)
        size += n
    if current:
        parts.append(current)
    return parts
