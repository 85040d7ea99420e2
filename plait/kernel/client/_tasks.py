"""The task objects users build and get back: StringTask, MapTask, TaskResult.

A task says what to run and how; the :class:`~plait.kernel.client.TaskClient`
submits it and the controller decides where.  Every option may be given to
the constructor as a keyword or set later as an attribute; it is checked
when the task is submitted (``run``), where a mistake raises TaskSpecError
naming the attribute.

Options common to both kinds
----------------------------
``clear_before`` / ``clear_after``
    Reset the engine's namespace before / after the task (after even when
    the task failed).
``retries``
    How many times a failed attempt is resubmitted, to an engine the task
    has not failed on when one is available.  An engine that dies while it
    runs the task alone counts as a failed attempt; when the task may not
    have been running (it was sent in a batch with others, or behind
    another one) it is run again without counting, unless that happens to
    it twice (see :mod:`plait.kernel.controller.task`).
``recovery_task``
    Another task, submitted once the retries are spent; it may have its own
    recovery task.  A chain that loops back is refused at ``run``.
``depend``
    A function of an engine's properties dict; the task only goes to
    engines where it returns a true value (raising anything counts as
    False).  It is called in the controller, again whenever an engine's
    properties change: it runs with the controller's rights, which is why
    the tc FURL must be guarded like the controller's account.
``timeout``
    Seconds the task may wait for an engine to take it (0 or None, the
    default: forever).  A task still waiting then fails with
    DependencyTimeout; one that has started is not interrupted.

Results
-------
A :class:`TaskResult` is what ``get_task_result`` returns for a finished
task.  ``results`` is the dict ``{name: value}`` of the ``pull`` names for a
:class:`StringTask`, and the function's return value for a
:class:`MapTask`; ``ns`` gives attribute access to a dict of results.  A
task that failed (or was aborted) has ``results`` None and its exception in
``failure``; :meth:`TaskResult.raise_exception` raises it.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from plait.wire.errors import RemoteError, RemoteFailure
from plait.wire.records import TaskResultRecord
from plait.wire.serialize import deserialize
from plait.wire.task import ABORTED, FAILED, SUCCEEDED, TaskSpec

__all__ = ["MapTask", "ResultNS", "StringTask", "Task", "TaskResult"]

_OPTIONS = ("clear_before", "clear_after", "retries", "recovery_task", "depend", "timeout")


def _option_text(task: TaskSpec) -> str:
    defaults = {"clear_before": False, "clear_after": False, "retries": 0,
                "recovery_task": None, "depend": None, "timeout": None}
    parts = [f"{name}={getattr(task, name)!r}" for name in _OPTIONS
             if getattr(task, name) != defaults[name]]
    return "".join(f", {p}" for p in parts)


class StringTask(TaskSpec):
    """A task that runs Python source on an engine.

    ``StringTask(expression, pull=None, push=None, clear_before=False,
    clear_after=False, retries=0, recovery_task=None, depend=None,
    timeout=None)``:
    ``push`` (a dict) is put in the engine namespace first, then
    ``expression`` runs as with ``MultiEngineClient.execute``; the values of
    the names in ``pull`` (a name or a list of names) are the task's
    results, as a dict.
    """

    def __init__(
        self,
        expression: str,
        pull: str | Iterable[str] | None = None,
        push: dict | None = None,
        clear_before: bool = False,
        clear_after: bool = False,
        retries: int = 0,
        recovery_task: TaskSpec | None = None,
        depend: Callable[[dict], Any] | None = None,
        timeout: float | None = None,
        time_limit: float | None = None,
    ):
        super().__init__(
            "string", expression=expression,
            pull=pull if isinstance(pull, str) else [] if pull is None else list(pull),
            push=dict(push or {}), clear_before=clear_before, clear_after=clear_after,
            retries=retries, recovery_task=recovery_task, depend=depend, timeout=timeout,
            time_limit=time_limit,
        )

    def __repr__(self) -> str:
        extra = f", pull={self.pull!r}" if self.pull else ""
        extra += f", push={self.push!r}" if self.push else ""
        return f"StringTask({self.expression!r}{extra}{_option_text(self)})"


#: The name the first task tutorial uses: ``client.Task("a = 5", pull="a")``.
Task = StringTask


class MapTask(TaskSpec):
    """A task that calls a function on an engine.

    ``MapTask(function, args=(), kwargs=None, clear_before=False,
    clear_after=False, retries=0, recovery_task=None, depend=None,
    timeout=None)``: the
    task's result is ``function(*args, **kwargs)``.  A function defined
    interactively runs in the engine namespace, as with ``apply``.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        args: Iterable[Any] | None = (),
        kwargs: dict | None = None,
        clear_before: bool = False,
        clear_after: bool = False,
        retries: int = 0,
        recovery_task: TaskSpec | None = None,
        depend: Callable[[dict], Any] | None = None,
        timeout: float | None = None,
        time_limit: float | None = None,
    ):
        super().__init__(
            "map", function=function, args=tuple(args or ()), kwargs=dict(kwargs or {}),
            clear_before=clear_before, clear_after=clear_after, retries=retries,
            recovery_task=recovery_task, depend=depend, timeout=timeout, time_limit=time_limit,
        )

    def __repr__(self) -> str:
        name = getattr(self.function, "__qualname__", None) or repr(self.function)
        extra = f", args={self.args!r}" if self.args else ""
        extra += f", kwargs={self.kwargs!r}" if self.kwargs else ""
        return f"MapTask({name}{extra}{_option_text(self)})"


class ResultNS:
    """Attribute access to a dict of task results: ``tr.ns.a`` is ``tr.results['a']``."""

    def __init__(self, results: dict):
        object.__setattr__(self, "_results", results)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_results":
            raise AttributeError(name)
        try:
            return self._results[name]
        except KeyError:
            raise AttributeError(
                f"the task results have no {name!r}; they have: {sorted(self._results)}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("task results are read-only")

    def __dir__(self) -> list[str]:
        return sorted(self._results)

    def __repr__(self) -> str:
        return f"ResultNS({self._results!r})"


def _local_time(stamp: float | None) -> datetime.datetime | None:
    return None if stamp is None else datetime.datetime.fromtimestamp(stamp)


class TaskResult:
    """The outcome of one finished task, with its metadata.

    Attributes:

    ``taskid``
        The task's id.
    ``status``
        ``'succeeded'``, ``'failed'`` or ``'aborted'``.
    ``results``
        For a StringTask, the dict ``{name: value}`` of its ``pull`` names
        (empty without ``pull``); for a MapTask, the function's return value.
        None when the task did not succeed.
    ``ns``
        ``results`` (a dict) with attribute access: ``tr.ns.a``.
    ``failure``
        None when the task succeeded; else a
        :class:`~plait.kernel.client.RemoteError` describing the exception
        (user code's, an EngineError when the engine died, TaskAborted...),
        with ``ename``, ``evalue``, ``traceback`` and ``engine_id``.
    ``engineid`` / ``engine_uuid``
        The engine of the last attempt (None if it never ran).
    ``submitted``, ``started``, ``completed``
        Local ``datetime``\\ s (controller's clock): when the task was
        submitted, when its last attempt was handed to its engine (None if
        never), when it finished.
    ``duration``
        Seconds the last attempt ran on its engine, as the engine measured
        it; when the engine could not say (it died, or the task was
        aborted while running), the seconds from ``started`` to
        ``completed``; 0.0 if it never started.
    ``attempts``, ``failed_on``
        How many times it was handed to an engine; the engines of its
        failed attempts, in order.
    ``recovery_taskid`` / ``recovery_of``
        The id of the recovery task submitted when this task failed for
        good / the id of the task this one recovers (None otherwise).
    ``recovered_from``
        When this task failed for good and its recovery task ran in its
        place, this task's own failure (a RemoteError); the result is then
        the recovery task's (as in the reference system: status, results,
        failure and engine are the recovery's).  None otherwise.
    """

    def __init__(self, record: TaskResultRecord, value: Any):
        self.taskid = record.taskid
        self.status = record.status
        self.engineid = record.engineid
        self.engine_uuid = record.engine_uuid
        self.submitted = _local_time(record.submitted)
        self.started = _local_time(record.started)
        self.completed = _local_time(record.completed)
        self.duration = record.duration
        self.attempts = record.attempts
        self.failed_on = list(record.failed_on)
        self.recovery_taskid = record.recovery_taskid
        self.recovery_of = record.recovery_of
        #: The task's own failure when its recovery task ran in its place (a RemoteError)
        self.recovered_from: RemoteError | None = None
        if record.recovered_from:
            lost = deserialize(record.recovered_from)
            if isinstance(lost, RemoteFailure):
                self.recovered_from = RemoteError(lost, "run_task")
        if record.status == SUCCEEDED:
            self.results = value
            self.failure: RemoteError | None = None
        else:
            self.results = None
            if not isinstance(value, RemoteFailure):
                value = RemoteFailure("RemoteException", repr(value), "")
            self.failure = RemoteError(value, "run_task")

    @property
    def succeeded(self) -> bool:
        """True when the task ran and returned."""
        return self.status == SUCCEEDED

    @property
    def failed(self) -> bool:
        """True when the task failed (retries spent) or was aborted."""
        return self.status in (FAILED, ABORTED)

    @property
    def ns(self) -> ResultNS:
        """Attribute access to ``results`` when it is a dict (a StringTask's)."""
        if isinstance(self.results, dict):
            return ResultNS(self.results)
        if self.failure is not None:
            raise AttributeError(
                f"task {self.taskid} {self.status} and has no results: {self.failure}"
            )
        raise AttributeError(
            f"the results of task {self.taskid} are not a dict (a MapTask's results are "
            f"its function's return value): use .results"
        )

    def raise_exception(self) -> None:
        """Raise the task's exception here (original type and message), if it failed.

        Does nothing for a task that succeeded.  The remote traceback is
        attached as a note (Python 3.11+) or as ``remote_traceback``.
        """
        if self.failure is not None:
            self._raise()

    def _raise(self) -> NoReturn:
        assert self.failure is not None
        self.failure.raise_exception()

    def get(self) -> Any:
        """``results``, or raise the task's exception when it did not succeed."""
        self.raise_exception()
        return self.results

    def __repr__(self) -> str:
        if self.failure is None:
            return f"TaskResult[ID:{self.taskid}]:{self.results!r}"
        return f"TaskResult[ID:{self.taskid}]:{self.status}: {self.failure.failure}"
