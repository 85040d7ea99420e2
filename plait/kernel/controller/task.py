"""The Task service of the controller: queue tasks, place them, retry, report.

:class:`TaskController` implements :class:`~plait.interfaces.task.ITaskController`
over an :class:`~plait.interfaces.engine.IEngineRegistry`, which it observes.

Security
--------
A task's ``depend`` is a function the *controller* calls, in its own
process and event loop.  Whoever may submit tasks (whoever holds the tc
FURL) may therefore run any code in the controller, with the controller's
account: that FURL is as powerful as the account itself.  This was already
so in the original system; give the FURL only to those you would give that
account.  (A ``depend`` that is slow also stalls the controller while it
runs, for every client.)

Life of a task
--------------
A client reserves ids (:meth:`TaskController.reserve`, see
:mod:`plait.kernel.controller.taskids`) and submits tasks under them
(:meth:`TaskController.submit`).  Each is decoded
(:mod:`plait.wire.task`) and put in the ``scheduled`` state, behind
every task that arrived before it.  A scheduling pass assigns it to an
engine: it is then ``pending``, and the
:class:`~plait.kernel.controller.dispatch.Dispatcher` sends it, with the other
tasks the pass gave that engine, through the engine's
:class:`~plait.interfaces.engine.IEngineQueue` (the queue the MultiEngine
interface uses too).  The attempt ends (see the dispatcher's ``Ended``):

* the engine ran it and it returned: the task has ``succeeded``;
* it raised, or the engine was lost while running it (EngineError), or
  its reply could not be read: the attempt failed.  While ``retries``
  remain the task is scheduled again, avoiding the engines it failed on as
  long as another engine that satisfies its depend is registered.  Once
  they are spent the task has ``failed`` with the last failure; if it has
  a ``recovery_task``, that is submitted as a new task first, and the
  failed task's result names it (``recovery_taskid``; the recovery task's
  result has ``recovery_of``);
* it never reached the engine (a MultiEngine ``clear_queue``, or the
  engine was lost while the task waited in its queue): not an attempt; the
  task is scheduled again;
* the engine was lost while the task was at the engine but may not have
  been running (*suspect*: it was behind another command, or one of
  several tasks sent together, whose engine runs them one by one): the
  first time, it is scheduled again without counting an attempt; the
  second time it counts as failed.  So an innocent task does not pay for a
  neighbour that killed its engine, and a task that kills engines is caught
  by its second kill.

A task may carry a ``timeout``: if no engine has taken it that many seconds
after its submission, it fails with DependencyTimeout.

``abort`` ends a scheduled or pending task as ``aborted`` at once (a pending
one cannot be interrupted: its engine finishes it and the value is dropped;
if it was still waiting in the engine queue it is left out there).  Aborted
tasks are counted under their own key ``aborted`` in ``queue_status``,
beside the reference's four, so that the states are disjoint and add up to
the number of tasks known.  Every task ends succeeded, failed or aborted;
its :class:`~plait.wire.task.TaskResultRecord` is kept until
``clear`` forgets it.  A task the controller cannot read (or whose depend
cannot be evaluated at all) is not refused: it is recorded as ``failed``
at once, its result saying why.

Times come from ``clock`` (``time.time`` by default).  ``started`` is when
the engine queue handed the last attempt to its engine; ``seconds`` (the
result's ``duration``) is the run time the engine measured.

Waiting
-------
A blocking call (``get_task_result(block=True)``, ``get_task_results``,
``barrier``) is one :class:`Waiter`: a count of the tasks it still waits
for, listed on each of them, not a Deferred per task.  Cancelling its
Deferred takes it off the tasks (the adapter cancels the calls of a client
whose connection went away).

Scheduling
----------
Waiting tasks live in a :class:`~plait.kernel.controller.scheduler.WaitingTasks`,
keyed by *arrival* (a counter stamped at submission, kept by retries), so
tasks start in the order they reached the controller, whatever ids their
clients reserved.  They are grouped by depend and engines to avoid, depends
evaluated once per engine and again when its properties change; a depend
that raises anything counts as False.  A pass repeatedly takes the
earliest task that an engine below its high water mark may run and lets
the :class:`~plait.interfaces.task.IScheduler` choose among those engines;
it stops at once when every engine is at its mark.  A scheduler that fails
to choose (raises, or names an engine that was not offered) is logged and
the task waits for the next pass; whatever the pass had planned is sent.
Passes run on submission, completion, engine arrival and departure,
property changes and ``spin``; a pass requested while one runs (a reply
that fires synchronously) is folded into it.  See
:mod:`plait.kernel.controller.scheduler` for the costs and the marks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import count
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from plait.interfaces.engine import IEngineRegistry
from plait.interfaces.task import IScheduler, ITaskController
from plait.kernel.controller.dispatch import BatchLabel, Dispatcher, Ended, failure_payload
from plait.kernel.controller.graph import MET, RUNNING, WAITING, Graph
from plait.kernel.controller.memory import COMPACT_AFTER, release_memory
from plait.kernel.controller.scheduler import (
    DEFAULT_HWM,
    DEFAULT_SCHEME,
    WaitingTasks,
    make_scheduler,
)
from plait.kernel.controller.taskids import TaskIds
from plait.kernel.controller.tasksession import TaskSession
from plait.kernel.controller.taskstate import Task, Waiter, acknowledgment
from plait.wire.errors import (
    DependencyTimeout,
    EngineError,
    ImpossibleDependency,
    InvalidDependency,
    InvalidEngineID,
    InvalidTaskID,
    TaskAborted,
    TaskAlreadyCompleted,
)
from plait.wire.records import TaskResultRecord, record_of
from plait.wire.task import (
    ABORTED,
    FAILED,
    PENDING,
    SCHEDULED,
    SUCCEEDED,
    ControllerTask,
    decode_task,
    task_ids,
)

STATES = (SCHEDULED, PENDING, SUCCEEDED, FAILED, ABORTED)

FINISHED = (SUCCEEDED, FAILED, ABORTED)

log = Logger()


@implementer(ITaskController)
class TaskController:
    """Load-balanced task farming over the engines of ``registry``.

    ``scheme`` and ``hwm`` choose the scheduler
    (:func:`~plait.kernel.controller.scheduler.make_scheduler`: a built-in scheme, a
    ``'module:function'`` scheme or a ``'module:Class'`` IScheduler);
    ``scheduler`` gives one directly (any
    :class:`~plait.interfaces.task.IScheduler`).  ``clock`` (an
    ``IReactorTime``, the reactor by default) stamps the results and times
    task timeouts; ``rng`` seeds the random schemes.

    Every submitted task's ``depend`` runs here, in the controller's event
    loop: see the module's security note.
    """

    def __init__(
        self,
        registry: IEngineRegistry,
        scheme: str = DEFAULT_SCHEME,
        hwm: int | None = DEFAULT_HWM,
        *,
        scheduler: IScheduler | None = None,
        clock: Any = None,
        rng: Any = None,
        hub: Any = None,
        horizon: Any = None,
    ):
        self._now: Callable[[], float] = time.time if clock is None else clock.seconds
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self._clock = clock
        if scheduler is None:
            scheduler = make_scheduler(scheme, hwm, rng, clock=self._now)
        self.scheduler = scheduler
        self._registry = registry
        self._dispatcher = Dispatcher(registry, self._now, self._attempt_ended, self._schedule)
        # ids go on after those the hub's store still holds (an earlier run's), and
        # after the profile's horizon (every earlier run's, whatever its store)
        self._ids = TaskIds(0 if hub is None else hub.first_free_id, horizon)
        self._first_of_run = self._ids.next_id  # ids below: tasks of earlier runs
        self._tasks: dict[int, Task] = {}
        self._states: dict[str, dict[int, None]] = {state: {} for state in STATES}
        self._waiting = WaitingTasks(self._properties)
        self._queued: dict[int, Task] = {}  # arrival -> task, for the tasks in _waiting
        self._arrivals = count()
        self._engines: set[int] = set()
        self._passing = False
        self._again = False
        self._hub = hub  # an IHub told of every task submitted and finished, or None
        self._graph = Graph(self._status, self._id_name)
        self._done: dict[int, tuple[bool, int | None]] = {}  # later tasks, once finished
        self._outcomes: dict[tuple[bool, int | None], tuple[bool, int | None]] = {}
        self._direct: dict[int, list[tuple[Task, str]]] = {}  # pinned tasks to send
        self._endings: deque[Task] = deque()  # finished tasks whose dependents wait
        self._completed_on: dict[int, int] = {}  # engine id -> tasks it finished
        # told of each task that finishes: fn(record, meta) (the status page's)
        self._finish_observers: list[Callable[[TaskResultRecord, dict | None], None]] = []
        self._settling = False
        registry.add_observer(self)
        for engine_id in registry.get_ids():
            self.engine_added(engine_id)

    # -- ITaskController -------------------------------------------------------
    def reserve(self, n: int, owner: Any = None) -> int:
        return self._ids.reserve(n, owner)

    def submit(self, tasks: Iterable[tuple[int, bytes]], owner: Any = None,
               later: bool = False) -> list[tuple[int, str]]:
        refused: list[tuple[int, str]] = []
        try:
            for taskid, data in tasks:
                reason = self._ids.take(taskid, owner)
                if reason is not None:
                    refused.append((taskid, reason))
                    continue
                self._accept(taskid, data, None, owner, later)
        finally:
            self._send_direct()
            self._schedule()
        return refused

    def release(self, owner: Any) -> int:
        return self._ids.release(owner)

    def readmit(self, tasks: Iterable[tuple[int, bytes, bool]],
                outcomes: dict[int, tuple[bool, int | None]],
                ran: dict[int, tuple[int, tuple]] | None = None) -> None:
        """Take back tasks a controller that died had accepted, ``[(taskid, data,
        later)]``, under their ids and with no owner (see :mod:`.restore`);
        ``outcomes``: how tasks they depend on ended, ``{taskid: (succeeded,
        engine_id)}``, for their graph dependencies; ``ran``: the tasks an
        engine finished successfully before (``{taskid: (engine_id, batch-reply
        entry)}``), taken back finished with that value instead of running."""
        for taskid, outcome in outcomes.items():
            self._done.setdefault(taskid, outcome)
        try:
            for taskid, data, later in tasks:
                report = None if ran is None else ran.get(taskid)
                if report is None or not self._take_finished(taskid, data, later, *report):
                    self._accept(taskid, data, None, None, later)
        finally:
            self._send_direct()
            self._schedule()

    def _take_finished(self, taskid: int, data: bytes, later: bool, engine_id: int,
                       entry: tuple) -> bool:
        """Take back ``taskid`` as finished on ``engine_id`` with the value of its
        batch-reply ``entry``; False (nothing done) when its data cannot be read."""
        try:
            spec = decode_task(data, allow_depend=not later)
        except Exception:
            return False  # (accepted as usual: it fails there, saying why)
        _ok, payload, seconds, _stash, meta = entry
        task = Task(taskid, spec, self._now(), None, next(self._arrivals), None, later)
        self._record(task, data)
        task.attempt = 1
        task.engine_id = engine_id
        task.engine_uuid = (self._registry.get_engine(engine_id).uuid
                            if engine_id in self._registry else None)
        task.seconds = float(seconds)
        task.meta = meta if isinstance(meta, dict) else None
        self._finish(task, SUCCEEDED, payload)
        return True

    def submit_acknowledged(self, tasks: Iterable[tuple[int, bytes]], owner: Any = None,
                            later: bool = False) -> defer.Deferred:
        """:meth:`submit`; a Deferred firing with its refusals once the hub has
        the accepted tasks where a restarted controller finds them."""
        try:
            refused = self.submit(tasks, owner, later)
        except Exception:
            return defer.fail()
        return self.durable().addCallback(lambda problem: acknowledgment(refused, problem))

    def durable(self) -> defer.Deferred:
        """A Deferred firing once every task accepted so far would survive this
        controller's death, with None or with why some may not (see
        :meth:`IHub.durable`); never fails."""
        return defer.succeed(None) if self._hub is None else self._hub.durable()

    def submit_new(self, tasks: Iterable[bytes], owner: Any = None, later: bool = False
                   ) -> list[int]:
        """Submit tasks under ids issued here (resubmissions); their ids, in order."""
        ids = []
        try:
            for data in tasks:
                taskid = self._ids.issue()
                ids.append(taskid)
                self._accept(taskid, data, None, owner, later)
        finally:
            self._send_direct()
            self._schedule()
        return ids

    def forget(self, taskids: Iterable[int] | None) -> None:
        """Forget the outcomes of finished later-generation tasks (all when None):
        graph dependencies on them are invalid from now on."""
        before = len(self._done)
        if taskids is None:
            self._done.clear()
        else:
            for taskid in taskids:
                self._done.pop(taskid, None)
        if before - len(self._done) >= COMPACT_AFTER:
            self._compact()

    def _compact(self) -> None:
        """Give back the room of a burst of tasks now gone (after a purge or clear):
        a dict keeps the size it grew to until it is rebuilt, and the C heap its
        free pages until trimmed."""
        self._tasks = dict(self._tasks)
        self._states = {state: dict(ids) for state, ids in self._states.items()}
        self._queued = dict(self._queued)
        self._done = dict(self._done)
        self._waiting.compact()
        if self._hub is not None:
            self._hub.compact()
        release_memory()

    def add_finish_observer(self, observer: Callable[[TaskResultRecord, dict | None], None]
                            ) -> None:
        """Call ``observer(record, meta)`` as each task finishes (``meta``: what its
        engine said of the run, plain data, or None); what it raises is logged."""
        self._finish_observers.append(observer)

    def remove_finish_observer(self, observer: Callable[[TaskResultRecord, dict | None], None]
                               ) -> None:
        """No longer call ``observer`` (one added by :meth:`add_finish_observer`)."""
        self._finish_observers.remove(observer)

    def running_on(self) -> dict[int, list[int]]:
        """The ids of the tasks each engine runs (or was handed) now, by engine id."""
        running: dict[int, list[int]] = {}
        for taskid in self._states[PENDING]:
            engine_id = self._tasks[taskid].engine_id
            if engine_id is not None:
                running.setdefault(engine_id, []).append(taskid)
        return running

    def completed_counts(self) -> dict[int, int]:
        """The tasks each engine finished (succeeded or failed) so far, by engine id."""
        return dict(self._completed_on)

    def engine_status(self, verbose: bool = False, name: Callable[[int], Any] | None = None
                      ) -> dict[Any, Any]:
        """Per engine: tasks handed to it (``tasks``), commands waiting in its
        queue (``queue``: the MultiEngine interface's, not the batches that
        carry the tasks counted in ``tasks``) and tasks it finished
        (``completed``); and the tasks waiting for an engine (``unassigned``).
        Lists with ``verbose``.

        With ``name`` (the later generation's view), pinned tasks count in
        ``queue`` (a direct view's requests), and ``name(taskid)`` names each
        task in the lists.
        """
        status: dict[Any, Any] = {}
        running: dict[int, list[int]] = {e: [] for e in self._registry.get_ids()}
        pinned: dict[int, list[int]] = {e: [] for e in running}
        for taskid in self._states[PENDING]:
            task = self._tasks[taskid]
            engine_id = task.engine_id
            if engine_id in running:
                direct = name is not None and task.spec is not None and task.spec.pinned
                (pinned if direct else running)[engine_id].append(taskid)
        label = name or (lambda taskid: taskid)
        for engine_id, ids in running.items():
            commands = self._registry.get_queue(engine_id).waiting_labels()
            queue = [*(str(c) for c in commands if not isinstance(c, BatchLabel)),
                     *(label(t) for t in sorted(pinned[engine_id]))]
            done = self._completed_on.get(engine_id, 0)
            status[engine_id] = {
                "queue": queue if verbose else len(queue),
                "tasks": [label(t) for t in sorted(ids)] if verbose else len(ids),
                "completed": done,
            }
        scheduled = self._states[SCHEDULED]
        status["unassigned"] = ([label(t) for t in sorted(scheduled)] if verbose
                                else len(scheduled))
        return status

    def get_task_result(self, taskid: int, block: bool = False) -> defer.Deferred:
        try:
            task = self._task(taskid)
        except InvalidTaskID:
            return self._from_hub([taskid], defer.fail(), block).addCallback(lambda rs: rs[0])
        if not block:
            return defer.succeed(task.record)
        return self._wait([task], lambda: task.record)

    def get_task_results(self, taskids: Iterable[int], block: bool = False) -> defer.Deferred:
        try:
            wanted = task_ids(taskids)
            tasks = [self._task(i) for i in wanted]
        except InvalidTaskID:
            return self._from_hub(wanted, defer.fail(), block)
        except TypeError:
            return defer.fail()
        if not block:
            return defer.succeed([t.record for t in tasks])
        return self._wait(tasks, lambda: [t.record for t in tasks])

    def _from_hub(self, taskids: list[int], unknown: defer.Deferred, block: bool = False
                  ) -> defer.Deferred:
        """The records of tasks of an earlier run that the hub keeps and this
        controller does not (a controller that died ran them; or it took them back
        and holds them until the last run's engines are back: ``block`` waits for
        those, else they count as unfinished, None); ``unknown`` (failing with
        InvalidTaskID) when one of them is in neither."""
        if self._hub is None or not all(isinstance(t, int) for t in taskids):
            return unknown
        here = {t: self._tasks[t].record for t in taskids if t in self._tasks}
        if any(t not in here and t >= self._first_of_run for t in taskids):
            return unknown  # (one of this run: cleared, or never submitted)

        def found(rows: list[dict | None]) -> Any:
            if any(r is None or r.get("kind") != "task" for r in rows):
                return unknown
            unknown.addErrback(lambda _: None)
            by_id = {r["id"]: None if r.get("status") is None else record_of(r)
                     for r in rows if r is not None}
            return [here[t] if t in here else by_id[t] for t in taskids]

        missing = [t for t in taskids if t not in here]
        d = self._hub.records(missing, block).addCallback(found)
        d.addErrback(lambda f: (unknown.addErrback(lambda _: None), f)[1])
        return d

    def barrier(self, taskids: int | Iterable[int]) -> defer.Deferred:
        try:
            tasks = [self._task(i) for i in task_ids(taskids)]
        except (InvalidTaskID, TypeError):
            return defer.fail()
        return self._wait(tasks, lambda: None)

    def abort(self, taskid: int) -> defer.Deferred:
        if isinstance(taskid, int) and taskid in self._done:
            raise TaskAlreadyCompleted(f"task {taskid} already completed")
        task = self._task(taskid)
        if task.state in FINISHED:
            raise TaskAlreadyCompleted(f"task {taskid} already completed ({task.state})")
        told: defer.Deferred = defer.succeed(None)
        if task.state == SCHEDULED:
            self._withdraw(task)
            engine_id, reason = None, f"{self._label(task)} was aborted before it ran"
        else:
            engine_id = task.engine_id
            reason = (f"{self._label(task)} was aborted on engine {engine_id}: it does not start "
                      f"there, or, if it had started, it is interrupted")
            if engine_id in self._registry:  # it skips the task if it has not started it
                told = self._registry.get_engine(engine_id).skip_tasks([taskid])
        self._finish(task, ABORTED, failure_payload(TaskAborted(reason), engine_id))
        return told

    def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        if verbose:
            return {state: sorted(ids) for state, ids in self._states.items()}
        return {state: len(ids) for state, ids in self._states.items()}

    def spin(self) -> None:
        self._waiting.refresh_all()
        self._schedule()

    def clear(self, taskids: int | Iterable[int] | None = None, owner: Any = None) -> int:
        if taskids is None:
            ids = [i for state in FINISHED for i in self._states[state]
                   if owner is None or self._tasks[i].owner is owner]
        else:
            ids = list(dict.fromkeys(task_ids(taskids)))
            for i in ids:
                task = self._task(i)
                if task.state not in FINISHED:
                    raise ValueError(
                        f"task {i} is {task.state}: only finished tasks can be cleared"
                    )
        for i in ids:
            task = self._tasks.pop(i)
            del self._states[task.state][i]
        if len(ids) >= COMPACT_AFTER:
            self._compact()
        return len(ids)

    def session(self) -> TaskSession:
        return TaskSession(self)

    def info(self) -> dict[str, Any]:
        return {
            "scheme": str(getattr(self.scheduler, "name", type(self.scheduler).__name__)),
            "hwm": getattr(self.scheduler, "hwm", None),
            "engines": len(self._engines),
            "marks": {e: self.scheduler.mark(e) for e in sorted(self._engines)},
        }

    # -- registry observer -------------------------------------------------------
    def engine_output(self, engine_id: int, chunks: list[tuple[int, str, str]]) -> None:
        """(The registry) what the running tasks of an engine printed: handed to
        their owners that listen (``task_output(taskid, engine_id, name, text)``)."""
        for taskid, name, text in chunks:
            task = self._tasks.get(taskid)
            if task is None or task.state != PENDING or task.engine_id != engine_id:
                continue  # not (or no longer) running there: a stale preview
            listen = getattr(task.owner, "task_output", None)
            if listen is not None:
                listen(taskid, engine_id, name, text)

    def engine_added(self, engine_id: int) -> None:
        """A new engine: offer it the waiting tasks its properties allow."""
        self._engines.add(engine_id)
        self.scheduler.add_engine(engine_id)
        self._waiting.engine_added(engine_id)
        self._schedule()

    def engine_removed(self, engine_id: int) -> None:
        """An engine left; its tasks fail through the queue (EngineError).

        Waiting tasks that only that engine could take can never run now.
        """
        self._drop_engine(engine_id)
        for arrival in self._waiting.hopeless():
            task = self._queued.pop(arrival)
            self._impossible(task, f"every engine it may run on is gone or refused it "
                                   f"(engine {engine_id} just left)")
        self._schedule()

    def properties_changed(self, engine_id: int) -> None:
        """Re-evaluate the depends of waiting tasks on this engine."""
        self._waiting.refresh(engine_id)
        self._schedule()

    # -- submission ------------------------------------------------------
    def _accept(self, taskid: int, data: bytes | ControllerTask, recovery_of: int | None,
                owner: Any = None, later: bool = False) -> None:
        """Submit a task under a fresh ``taskid``; whatever goes wrong, it is recorded.

        ``later``: a task of the later generation (no depend may run here;
        once finished, the hub keeps its record and only its outcome stays).
        """
        problem: str | None = None
        try:
            spec = (data if isinstance(data, ControllerTask)
                    else decode_task(data, allow_depend=not later))
            task = Task(taskid, spec, self._now(), recovery_of, next(self._arrivals),
                        owner, later)
            problem = self._admit(task)  # evaluates its depend: nothing is recorded if that fails
        except BaseException as exc:  # even a SystemExit from user code
            task = Task(taskid, ControllerTask(b"?"), self._now(), recovery_of,
                        next(self._arrivals), owner, later)
            self._record(task, data)
            self._finish(task, FAILED, failure_payload(exc, None))
            return
        self._record(task, data)
        if problem is not None:
            self._impossible(task, problem, invalid=problem.startswith("it depends on tasks"))
        elif task.spec is not None and task.spec.timeout and task.state == SCHEDULED:
            task.expiry = self._clock.callLater(task.spec.timeout, self._expire, task)

    def _record(self, task: Task, data: bytes | ControllerTask) -> None:
        self._tasks[task.taskid] = task
        self._states[task.state][task.taskid] = None
        if self._hub is not None:
            self._hub.submitted(task, data if isinstance(data, bytes) else None)

    def _admit(self, task: Task) -> str | None:
        """Place a new task: pinned to its engine, blocked on its graph
        dependencies, or waiting for the scheduler.  Returns why it can never
        run, or None."""
        spec = task.spec
        assert spec is not None
        if spec.pinned:
            assert spec.targets is not None  # (decode_task checked)
            engine_id = spec.targets[0]
            try:
                uuid = self._registry.get_engine(engine_id).uuid
            except KeyError:
                raise InvalidEngineID(f"no engine with id {engine_id!r}; registered engines: "
                                      f"{self._registry.get_ids()}") from None
            self._direct.setdefault(engine_id, []).append((task, uuid))
            return None
        if spec.targets is not None and not (set(spec.targets) & self._engines):
            raise InvalidEngineID(f"no engine with an id in targets {list(spec.targets)}; "
                                  f"registered engines: {sorted(self._engines)}")
        if spec.after is not None or spec.follow is not None:
            state, detail = self._graph.add(task, spec.after, spec.follow)
            if state == WAITING:
                return None
            if state != MET:
                return detail
            self._follow(task, detail)
        return self._enqueue(task)

    def _follow(self, task: Task, engines: frozenset[int] | None) -> None:
        """``task``'s graph dependencies are met: keep it to the engines it must follow."""
        if engines is not None:
            task.only = engines if task.only is None else task.only & engines

    def _send_direct(self) -> None:
        """Send the pinned tasks just submitted to their engines, in order."""
        direct, self._direct = self._direct, {}
        for engine_id, entries in direct.items():
            tasks = [task for task, _ in entries if task.state == SCHEDULED]
            for task, uuid in entries:
                if task.state == SCHEDULED:
                    self._claim(task, engine_id, uuid)
            try:
                self._dispatcher.send(engine_id, tasks, fresh=False)
            except KeyError:  # the engine left meanwhile
                for task in tasks:
                    self._finish(task, FAILED, failure_payload(EngineError(
                        f"engine {engine_id} was lost before {self._label(task)} was sent"),
                        engine_id))

    def _enqueue(self, task: Task) -> str | None:
        """``task`` waits for an engine; returns why none may ever take it, or None."""
        assert task.spec is not None
        if task.only is not None or task.never:
            possible = self._engines if task.only is None else self._engines & task.only
            if not possible - task.never:
                return (f"no engine can run it: it may run on engines {sorted(task.only or ())}"
                        f" and was refused by {sorted(task.never)}; registered engines: "
                        f"{sorted(self._engines)}")
        self._waiting.add(task.arrival, task.spec.depend_key, task.spec.depend, task.failed_on,
                          task.only, task.never)
        self._queued[task.arrival] = task
        return None

    def _unqueue(self, task: Task) -> None:
        self._waiting.remove(task.arrival)
        del self._queued[task.arrival]

    def _withdraw(self, task: Task) -> None:
        """A scheduled task stops waiting (for an engine, or its dependencies)."""
        if task.arrival in self._queued:
            self._unqueue(task)
        else:
            self._graph.forget(task)

    def _id_name(self, taskid: int) -> Any:
        """A task id as messages name it: the msg_id, with a hub (later tasks)."""
        return taskid if self._hub is None else self._hub.msg_id(taskid)

    def _label(self, task: Task) -> str:
        """``task {id}`` in messages: its msg_id for a later-generation task."""
        return f"task {self._id_name(task.taskid) if task.later else task.taskid}"

    def _impossible(self, task: Task, why: str, invalid: bool = False) -> None:
        """``task`` can never run: it fails with ImpossibleDependency saying ``why``
        (its record names no engine: none ran it)."""
        error = (InvalidDependency if invalid else ImpossibleDependency)(
            f"{self._label(task)} cannot run: {why}")
        task.engine_id = task.engine_uuid = None
        self._graph.forget(task)
        self._finish(task, FAILED, failure_payload(error, None))

    def _requeue(self, task: Task) -> None:
        self._set_state(task, SCHEDULED)
        problem = self._enqueue(task)
        if problem is not None:
            self._impossible(task, problem)

    def _expire(self, task: Task) -> None:
        """The task's timeout: fail it if no engine has taken it yet."""
        task.expiry = None
        if task.state == SCHEDULED and task.attempt == 0:
            self._withdraw(task)
            assert task.spec is not None
            self._finish(task, FAILED, failure_payload(DependencyTimeout(
                f"{self._label(task)} found no engine to run it within its timeout of "
                f"{task.spec.timeout:g} s"), None))

    def _drop_engine(self, engine_id: int) -> None:
        if engine_id in self._engines:
            self._engines.discard(engine_id)
            self.scheduler.remove_engine(engine_id)
            self._waiting.engine_removed(engine_id)

    def _properties(self, engine_id: int) -> dict | None:
        """The engine's properties; None if it left (the registry tells us soon)."""
        try:
            return self._registry.get_properties(engine_id)
        except KeyError:
            return None

    # -- scheduling ------------------------------------------------------------------
    def _schedule(self) -> None:
        """Place waiting tasks; a call made during a pass makes it go on."""
        if self._passing:
            self._again = True
            return
        self._passing = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._assign_all()
        except Exception:
            log.failure("a scheduling pass failed; the waiting tasks wait for the next one")
        finally:
            self._passing = False

    def _assign_all(self) -> None:
        """Take runnable tasks in arrival order; send each engine its share at once."""
        plan: dict[int, list[Task]] = {}
        fresh: dict[int, bool] = {}
        uuids: dict[int, str] = {}
        try:
            while True:
                ready = self.scheduler.available()
                found = self._waiting.pop_runnable(ready) if ready else None
                if found is None:
                    break
                arrival, candidates = found
                task = self._queued.pop(arrival)
                engine_id = self._choose(task, candidates)
                if engine_id is None:  # the scheduler failed: try again next pass
                    self._queue_again(task)
                    break
                if engine_id not in plan:
                    try:
                        uuids[engine_id] = self._registry.get_engine(engine_id).uuid
                        self._registry.get_queue(engine_id)
                    except KeyError:  # left, and the registry has not told us yet
                        self._drop_engine(engine_id)
                        self._queue_again(task)
                        continue
                    plan[engine_id] = []
                    fresh[engine_id] = self.scheduler.load(engine_id) == 0
                self._claim(task, engine_id, uuids[engine_id])
                plan[engine_id].append(task)
        finally:
            for engine_id, tasks in plan.items():
                self._dispatcher.send(engine_id, tasks, fresh[engine_id])

    def _queue_again(self, task: Task) -> None:
        """Put back a task taken for this pass but not placed."""
        problem = self._enqueue(task)
        if problem is not None:
            self._impossible(task, problem)

    def _choose(self, task: Task, candidates: set[int]) -> int | None:
        """The scheduler's choice among ``candidates``; None (logged) if it fails."""
        try:
            engine_id = self.scheduler.choose(candidates)
            if engine_id in candidates:
                return engine_id
            problem = f"chose {engine_id!r}, not one of the engines offered {sorted(candidates)}"
        except BaseException as exc:  # user code must not stop scheduling
            problem = f"raised {exc!r}"
        log.error("the scheduler {scheduler!r} {problem} for task {taskid}; the task waits "
                  "for the next scheduling pass", scheduler=self.scheduler, problem=problem,
                  taskid=task.taskid)
        return None

    def _claim(self, task: Task, engine_id: int, uuid: str) -> None:
        """``task`` is now pending on ``engine_id`` (a new attempt)."""
        self._set_state(task, PENDING)
        task.attempt += 1
        task.engine_id = engine_id
        task.engine_uuid = uuid
        task.started = None
        task.seconds = None
        task.meta = None  # (what an earlier attempt's engine said is not this one's)
        if task.expiry is not None:
            task.expiry.cancel()
            task.expiry = None
        self.scheduler.assigned(engine_id)

    def _attempt_ended(self, task: Task, engine_id: int, attempt: int, ended: Ended) -> None:
        """The dispatcher's report: one attempt of ``task`` on ``engine_id`` is over."""
        self.scheduler.finished(engine_id, ended.seconds)
        self._waiting.slot_freed(engine_id)
        if ended.engine_lost:  # keep retries off it (the registry may not know yet)
            self._drop_engine(engine_id)
        if task.state != PENDING or task.attempt != attempt:
            return  # aborted meanwhile: the outcome is dropped
        if ended.meta is not None:
            task.meta = ended.meta
        pinned = task.spec is not None and task.spec.pinned
        if ended.kind == "reply":
            task.seconds = ended.seconds
            if ended.ok:
                self._finish(task, SUCCEEDED, ended.payload)
            elif ended.meta and ended.meta.get("unmet") and not pinned:
                self._unmet(task, engine_id)
            else:
                self._attempt_failed(task, engine_id, ended.payload)
        elif pinned:  # a direct request runs where it was sent, or fails
            self._finish(task, FAILED, ended.payload or failure_payload(EngineError(
                f"engine {engine_id} was lost before it ran {self._label(task)}"), engine_id))
        elif ended.kind == "never_ran":
            self._requeue(task)
        elif ended.kind == "suspect" and task.suspicions == 0:
            task.suspicions += 1  # it may never have started: run it again, freely
            self._requeue(task)
        else:  # failed, or under suspicion a second time
            self._attempt_failed(task, engine_id, ended.payload)

    def _unmet(self, task: Task, engine_id: int) -> None:
        """A functional dependency of ``task`` is not met on ``engine_id``: it goes
        to another engine (never back to that one), or fails when none is left."""
        task.never = task.never | {engine_id}
        self._requeue(task)

    def _attempt_failed(self, task: Task, engine_id: int, failure: bytes) -> None:
        assert task.spec is not None
        task.failed_on += (engine_id,)
        if task.retries_left > 0:
            task.retries_left -= 1
            self._requeue(task)
            return
        if task.spec.recovery is not None:
            # the recovery task runs in its place: this task finishes with its result,
            # its own failure kept beside it (as the reference system did)
            recovery_id = self._ids.issue()
            task.recovering = (recovery_id, failure)
            self._accept(recovery_id, task.spec.recovery, task.taskid, task.owner, task.later)
            return
        self._finish(task, FAILED, failure)

    # -- endings -----------------------------------------------------------------------
    def _finish(
        self, task: Task, state: str, payload: bytes, recovery_id: int | None = None,
        recovered_from: bytes | None = None,
    ) -> None:
        self._set_state(task, state)
        record = TaskResultRecord(
            taskid=task.taskid,
            status=state,
            payload=payload,
            engineid=task.engine_id,
            engine_uuid=task.engine_uuid,
            submitted=task.submitted,
            started=task.started,
            completed=self._now(),
            attempts=task.attempt,
            failed_on=list(task.failed_on),
            recovery_taskid=recovery_id,
            recovery_of=task.recovery_of,
            seconds=task.seconds,
            recovered_from=recovered_from,
        )
        meta = task.meta
        if meta is not None:
            record.stdout = meta.get("stdout") or ""
            record.stderr = meta.get("stderr") or ""
            record.engine_started = meta.get("started")
            record.engine_completed = meta.get("completed")
            record.pyout = meta.get("pyout")
            record.execution_count = meta.get("execution_count")
        task.record = record
        task.spec = None
        if task.expiry is not None:
            task.expiry.cancel()
            task.expiry = None
        waiters, task.waiters = task.waiters, None
        for waiter in waiters or ():
            waiter.one_finished()
        if task.engine_id is not None and state in (SUCCEEDED, FAILED):
            self._completed_on[task.engine_id] = self._completed_on.get(task.engine_id, 0) + 1
        if self._hub is not None:
            self._hub.finished(record, task)
        for observer in self._finish_observers:
            try:
                observer(record, meta)
            except Exception:
                log.failure("a finish observer failed")
        notify = getattr(task.owner, "task_finished", None)
        if notify is not None:
            notify(record)
        if task.later:  # the hub has its record: only its outcome stays here
            del self._tasks[task.taskid]
            del self._states[state][task.taskid]
            outcome = (state == SUCCEEDED, task.engine_id)  # (one tuple per outcome kept)
            self._done[task.taskid] = self._outcomes.setdefault(outcome, outcome)
        self._endings.append(task)
        if task.recovery_of is not None:
            self._recovered(task, record)
        self._settle_dependents()

    def _recovered(self, recovery: Task, record: TaskResultRecord) -> None:
        """The recovery task of a failed task finished: the failed task finishes
        with its outcome (and its recovery chain's, through this same call)."""
        original = self._tasks.get(recovery.recovery_of)  # type: ignore[arg-type]
        if original is None or original.recovering is None or original.state in FINISHED:
            return  # aborted or cleared meanwhile
        recovery_id, failure = original.recovering
        if recovery_id != recovery.taskid:
            return
        original.recovering = None
        original.engine_id, original.engine_uuid = record.engineid, record.engine_uuid
        original.started, original.seconds = record.started, record.seconds
        original.meta = {"stdout": record.stdout, "stderr": record.stderr,
                         "started": record.engine_started,
                         "completed": record.engine_completed, "pyout": record.pyout,
                         "execution_count": record.execution_count}
        self._finish(original, record.status, record.payload, recovery_id,
                     recovered_from=failure)

    def _settle_dependents(self) -> None:
        """Tell the graph of the tasks that finished (a loop, not a recursion: a
        chain of failures can be thousands long)."""
        if self._settling:
            return
        self._settling = True
        placed = False
        try:
            while self._endings:
                done = self._endings.popleft()
                decided = self._graph.finished(done.taskid, done.state == SUCCEEDED,
                                               done.engine_id)
                for task, state, detail in decided:
                    if task.state != SCHEDULED:
                        continue  # aborted or timed out meanwhile
                    if state == MET:
                        self._follow(task, detail)
                        problem = self._enqueue(task)
                        if problem is not None:
                            self._impossible(task, problem)
                        placed = True
                    else:
                        self._impossible(task, detail)
        finally:
            self._settling = False
        if placed and not self._dispatcher.settling:  # else: one pass after the command
            self._schedule()

    def _status(self, taskid: int) -> Any:
        """How a task stands, for graph dependencies (see :mod:`.graph`)."""
        task = self._tasks.get(taskid)
        if task is not None:
            if task.state in FINISHED:
                return task.state == SUCCEEDED, task.engine_id
            return RUNNING
        return self._done.get(taskid)

    def _wait(self, tasks: list[Task], value: Callable[[], Any]) -> defer.Deferred:
        """A Deferred firing with ``value()`` once every task in ``tasks`` has finished."""
        unfinished = list({id(t): t for t in tasks if t.record is None}.values())
        if not unfinished:
            return defer.succeed(value())
        return Waiter(unfinished, value).deferred

    # -- helpers -----------------------------------------------------------------------
    def _set_state(self, task: Task, state: str) -> None:
        del self._states[task.state][task.taskid]
        self._states[state][task.taskid] = None
        task.state = state

    def _task(self, taskid: int) -> Task:
        try:
            task = None if isinstance(taskid, bool) else self._tasks.get(taskid)
        except TypeError:  # unhashable
            task = None
        if task is None:
            raise InvalidTaskID(
                f"no task with id {taskid!r}: never submitted, or its result was cleared"
            )
        return task
