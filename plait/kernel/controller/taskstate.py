"""Tasks as the task controller holds them, and the blocking calls waiting on them.

See :mod:`plait.kernel.controller.task` for the life of a task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from plait.wire.records import TaskResultRecord
from plait.wire.task import SCHEDULED, ControllerTask

NO_ENGINES: frozenset[int] = frozenset()
log = Logger()
_told: list[str | None] = [None]  # the last problem acknowledgment() logged


class Task:
    """A task inside the controller, from submission until it is cleared."""

    __slots__ = (
        "taskid", "spec", "state", "retries_left", "failed_on", "attempt", "engine_id",
        "engine_uuid", "submitted", "started", "record", "waiters", "recovery_of",
        "suspicions", "seconds", "arrival", "expiry", "owner", "later", "blocked", "only",
        "never", "meta", "recovering",
    )

    def __init__(self, taskid: int, spec: ControllerTask, submitted: float,
                 recovery_of: int | None, arrival: int, owner: Any = None,
                 later: bool = False):
        self.taskid = taskid
        self.spec: ControllerTask | None = spec  # dropped once finished
        self.state = SCHEDULED
        self.retries_left = spec.retries
        self.failed_on: tuple[int, ...] = ()  # (a tuple: most tasks never fail)
        self.attempt = 0  # times handed to an engine
        self.engine_id: int | None = None
        self.engine_uuid: str | None = None
        self.submitted = submitted
        self.started: float | None = None
        self.record: TaskResultRecord | None = None
        self.waiters: list[Waiter] | None = None
        self.recovery_of = recovery_of
        self.suspicions = 0  # engine losses that may not have been its fault
        self.seconds: float | None = None  # the run time of the last attempt
        self.arrival = arrival  # its place among the waiting tasks
        self.expiry: Any = None  # the delayed call of its timeout
        self.owner = owner  # who submitted it (a session), told when it finishes
        self.later = later  # a task of the later generation: the hub keeps its record
        self.blocked: Any = None  # its graph dependencies, while they are not met
        self.only = None if spec.targets is None else frozenset(spec.targets)
        # engines where a functional dependency was unmet (shared while there is none)
        self.never: frozenset[int] = NO_ENGINES
        self.meta: dict | None = None  # the last attempt's output and engine times
        #: (the recovery task's id, this task's failure) while its recovery runs
        self.recovering: tuple[int, bytes] | None = None


class Waiter:
    """One blocking call: fires ``value()`` once every task in ``tasks`` has finished."""

    __slots__ = ("tasks", "value", "left", "deferred")

    def __init__(self, tasks: list[Task], value: Callable[[], Any]):
        self.tasks = tasks
        self.value = value
        self.left = len(tasks)
        self.deferred: defer.Deferred = defer.Deferred(canceller=self._cancel)
        for task in tasks:
            if task.waiters is None:
                task.waiters = []
            task.waiters.append(self)

    def one_finished(self) -> None:
        self.left -= 1
        if not self.left:
            self.deferred.callback(self.value())

    def _cancel(self, _: defer.Deferred) -> None:
        for task in self.tasks:
            if task.waiters and self in task.waiters:
                task.waiters.remove(self)


def acknowledgment(refused: list, problem: str | None) -> list:
    """The answer to a submission: its refusals ``[(taskid, reason)]``, then,
    when the hub could not keep what was accepted on disk (``problem``, from
    ``durable``), ``(None, why)``: those tasks run, but would not survive the
    controller's death (the client warns of it)."""
    if problem is None:
        return refused
    if problem != _told[0]:  # (once per failed write, not once per submission)
        _told[0] = problem
        log.error("submitted tasks are not on disk: {problem}", problem=problem)
    return [*refused, (None, f"accepted and running, but not kept on disk: {problem}; they "
                             f"would be lost if the controller died")]
