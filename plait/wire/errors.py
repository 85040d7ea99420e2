"""Every exception of plait, in one module, and how engine exceptions travel.

All three kinds of process raise and catch these, and send them to each
other pickled (inside a :class:`RemoteFailure`, or a task's result): a class
here travels *by reference*, under the name ``plait.wire.errors.<Class>``.  Those names are a wire contract: keep them,
and keep each class's constructor able to rebuild it from its ``__reduce__``
(processes of one cluster may unpickle what another sent).  Users import
them from :mod:`plait.kernel.client`, which re-exports them; their
``__module__`` stays this one, the name they travel under.

An exception raised by user code on an engine is captured as a
:class:`RemoteFailure` (type name, message, traceback text and, when it can
be pickled, the exception itself) and shipped back as a value, so that the
user sees the real type, message and traceback.

A call made on several engines at once can fail on any number of them; the
client then raises one :class:`CompositeError` that lists every failure and
keeps the values of the engines that succeeded::

    >>> try:
    ...     mec.execute('1/0')
    ... except CompositeError as e:
    ...     print(e)
    one or more exceptions from call to method: execute
    [0:execute]: ZeroDivisionError: division by zero
    [1:execute]: ZeroDivisionError: division by zero

:func:`collect_results` builds it from per-engine outcomes.

The hierarchy: :class:`PlaitError` is the base of every error a user may
meet, except :class:`StopLocalExecution` (control flow of ``with mec:``
blocks) and :class:`ChannelError` (internal to the channel transport,
translated before it reaches users).
"""

from __future__ import annotations

import builtins
import pickle
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NoReturn, TextIO

import cloudpickle


class PlaitError(Exception):
    """Base class of plait's own errors."""


class PlaitWarning(UserWarning):
    """Something the user should know that is not an error: for instance, tasks
    accepted and running that the controller could not keep on disk."""


class SerializationError(PlaitError):
    """An object could not be pickled or unpickled; the message says which."""


class EngineError(PlaitError):
    """An engine was lost (killed, disconnected) before it answered."""


class QueueCleared(PlaitError):
    """A queued command was dropped by ``clear_queue`` before it ran."""


class InvalidEngineID(PlaitError, KeyError):
    """A target names an engine that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


class ResultNotCompleted(PlaitError):
    """A pending result was asked for without blocking and is not ready."""


class ResultAlreadyRetrieved(PlaitError, KeyError):
    """A pending result id is unknown: taken already, flushed, or never issued."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PlaitConnectionError(PlaitError):
    """A client or engine could not reach or authenticate to a controller."""


class EnginesChanged(PlaitError):
    """A call prepared for all the engines met a different set of engines.

    ``ids`` are the engines registered now; nothing was run.
    """

    def __init__(self, message: str, ids: list[int]):
        super().__init__(message)
        self.ids = list(ids)

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.ids)


# -- the Task interface -------------------------------------------------------------------
class TaskSpecError(PlaitError, ValueError):
    """A task description is malformed; the message says which attribute."""


class RecoveryLoopError(TaskSpecError):
    """A task's chain of recovery tasks comes back to a task already in it."""


class InvalidTaskID(PlaitError, KeyError):
    """A task id is unknown: never issued, or its result was cleared."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


class TaskAlreadyCompleted(PlaitError, IndexError):
    """``abort`` was asked for a task that has already finished."""


class TaskAborted(PlaitError):
    """The failure carried by the result of an aborted task."""


class TaskSubmissionError(PlaitError):
    """A task submitted by ``run`` never reached the controller's queue."""


class TaskTimeout(PlaitError):
    """A task ran longer than its time limit."""


class UnmetDependency(PlaitError):
    """Raised on an engine by a task whose functional dependency is not met
    there: the scheduler sends the task to another engine (never twice to the
    same one) instead of reporting a failure."""


class ImpossibleDependency(UnmetDependency):
    """A task whose dependencies can never be met: its graph dependencies
    failed (or ran where it cannot follow), or every engine refused it."""


class DependencyTimeout(ImpossibleDependency):
    """The failure of a task that no engine took within its ``timeout``."""


class InvalidDependency(ImpossibleDependency):
    """A task depends on tasks that do not exist (never submitted, or purged)."""


class QueryError(PlaitError, ValueError):
    """A hub query (``db_query``) that is not understood; the message says what."""


class NoEnginesRegistered(PlaitError):
    """A call needs engines and the controller has none."""


class TimeoutError(PlaitError, builtins.TimeoutError):  # (ipyparallel's name)
    """Waiting for a result took longer than the timeout given (also a
    :class:`builtins.TimeoutError`)."""


# -- transports --------------------------------------------------------------------------
class BulkError(PlaitError):
    """A bulk transfer failed: rejected, aborted, truncated or timed out."""


class BulkIntegrityError(BulkError):
    """Downloaded ciphertext failed authentication (tampered with or corrupt)."""


class ChannelError(Exception):
    """A channel call failed: the peer refused it or the channel is gone."""


class ChannelClosed(ChannelError):
    """The channel was closed before the call was answered."""


# -- clients and commands ----------------------------------------------------------------
class StopLocalExecution(Exception):
    """Raised by ``remote()`` to stop the local run of a ``with mec:`` body."""


class ClusterError(PlaitError):
    """Starting a cluster failed; the message says why."""


class EnrollmentRefused(PlaitError, PermissionError):
    """A controller that admits enrolled engines only refused one: it showed no
    enrollment secret, or one that is not valid there or was used before."""


def _safe_str(exc: BaseException) -> str:
    """``str(exc)``, even when the exception's ``__str__`` is broken."""
    try:
        return str(exc)
    except Exception as err:
        return f"<unprintable {type(exc).__name__} object: {type(err).__name__} in __str__>"


def _format_traceback(exc: BaseException, tb: TracebackType | None) -> str:
    """Traceback text of ``exc`` starting at ``tb``; never raises."""
    try:
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:
        return f"{type(exc).__name__}: {_safe_str(exc)}\n"


_KEEP = object()  # from_exception: use the exception's own traceback


@dataclass
class RemoteFailure:
    """A picklable description of an exception raised somewhere else.

    ``exc`` holds the pickled exception instance (None when it could not be
    pickled); :meth:`exception` rebuilds it, falling back to a
    :class:`RemoteException` carrying the type name and message.  ``extra``
    carries context for the client; the engine puts the result dict of a
    failed ``execute`` (its ``stdout`` and ``stderr`` so far) under
    ``extra['result']``.
    """

    ename: str
    evalue: str
    traceback: str
    exc: bytes | None = None
    engine_id: int | None = None
    method: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        engine_id: int | None = None,
        method: str = "",
        tb_skip: int = 0,
        *,
        tb: Any = _KEEP,
        extra: dict | None = None,
    ) -> RemoteFailure:
        """Describe ``exc``; never raises.

        The traceback text starts at ``tb`` when given (None: no frames, only
        the exception line), else at the exception's own traceback minus its
        ``tb_skip`` leading frames (the last frame is always kept).
        """
        if tb is _KEEP:
            tb = exc.__traceback__
            for _ in range(tb_skip):
                if tb is not None and tb.tb_next is not None:
                    tb = tb.tb_next
        blob: bytes | None
        try:
            dumped: bytes = cloudpickle.dumps(exc, protocol=5)
            pickle.loads(dumped)  # make sure it comes back
            blob = dumped
        except Exception:
            blob = None
        return cls(
            ename=type(exc).__name__,
            evalue=_safe_str(exc),
            traceback=_format_traceback(exc, tb),
            exc=blob,
            engine_id=engine_id,
            method=method,
            extra=dict(extra or {}),
        )

    def exception(self) -> BaseException:
        """The original exception instance, or a RemoteException standing in."""
        if self.exc is not None:
            try:
                return pickle.loads(self.exc)
            except Exception:
                pass
        return RemoteException(self.ename, self.evalue, self.traceback)

    def __str__(self) -> str:
        return f"{self.ename}: {self.evalue}"


class RemoteException(PlaitError):
    """Stands in for a remote exception whose type could not be rebuilt here."""

    def __init__(self, ename: str, evalue: str, traceback_text: str = ""):
        super().__init__(f"{ename}: {evalue}")
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback_text

    def __reduce__(self) -> tuple:
        return (type(self), (self.ename, self.evalue, self.traceback))


def _label(engine_id: int | None, method: str) -> str:
    """The ``[0:execute]`` tag naming where a failure happened."""
    where = "?" if engine_id is None else str(engine_id)
    return f"[{where}:{method}]"


class RemoteError(PlaitError):
    """An exception raised on one engine, with where and how it happened.

    ``failure`` is the :class:`RemoteFailure`; ``ename``, ``evalue``,
    ``traceback`` (the remote traceback text), ``engine_id`` and ``method``
    are copied from it for convenience.
    """

    #: None only on a :class:`CompositeError` that holds no failures.
    failure: RemoteFailure | None

    def __init__(self, failure: RemoteFailure, method: str | None = None):
        self.failure = failure
        self.method = method if method is not None else failure.method
        self.engine_id = failure.engine_id
        self.ename = failure.ename
        self.evalue = failure.evalue
        self.traceback = failure.traceback
        super().__init__(f"{_label(self.engine_id, self.method)}: {failure}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.failure, self.method))

    @property
    def engine_info(self) -> dict[str, Any]:
        """Where it happened, as ipyparallel names it: ``engine_id``, ``engine_uuid``
        (None when unknown) and ``method``."""
        uuid = self.failure.extra.get("engine_uuid") if self.failure is not None else None
        return {"engine_id": self.engine_id, "engine_uuid": uuid, "method": self.method}

    def raise_exception(self) -> NoReturn:
        """Raise the original exception (type and message) from the engine.

        The remote traceback text is attached as a note (Python 3.11+) or as
        the ``remote_traceback`` attribute.
        """
        assert self.failure is not None  # set by __init__
        _raise_original(self.failure, _label(self.engine_id, self.method))

    def print_traceback(self, file: TextIO | None = None) -> None:
        """Print the remote traceback, headed by ``[engine:method]:``."""
        out = file if file is not None else sys.stdout
        print(f"{_label(self.engine_id, self.method)}:", file=out)
        print(self.traceback.rstrip("\n"), file=out)


def _raise_original(failure: RemoteFailure, label: str) -> NoReturn:
    exc = failure.exception()
    if failure.traceback:
        note = f"{label} remote traceback:\n{failure.traceback.rstrip()}"
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        else:  # Python 3.10
            try:
                exc.remote_traceback = note  # type: ignore[attr-defined]
            except AttributeError:
                pass
    raise exc from None


class CompositeError(RemoteError):
    """One or more engines failed during a call made on several engines.

    ``CompositeError(method, failures, results=None)``:

    * ``method``: the name of the call (``'execute'``, ``'push'``...);
    * ``failures``: ``(engine_id, RemoteFailure)`` pairs, in engine order;
    * ``results``: ``{engine_id: value}`` of the engines that succeeded, kept
      so that their work is not lost.

    ``elist`` is the list of ``(engine_id, method, RemoteFailure)`` triples
    (``method`` is the failure's own when it has one, else the call's);
    ``e[i]`` is ``e.elist[i]``.  The instance pickles, so it may be shipped.
    """

    def __init__(
        self,
        method: str,
        failures: Iterable[tuple[int | None, RemoteFailure]],
        results: dict[int, Any] | None = None,
    ):
        self.method = method
        self.elist: list[tuple[int | None, str, RemoteFailure]] = [
            (engine_id, failure.method or method, failure) for engine_id, failure in failures
        ]
        self.results: dict[int, Any] = dict(results or {})
        self.engine_id = None
        self.failure = self.elist[0][2] if self.elist else None
        self.ename = type(self).__name__
        self.evalue = self.traceback = ""
        lines = [f"one or more exceptions from call to method: {method}"]
        lines += [f"{_label(eid, meth)}: {fail}" for eid, meth, fail in self.elist]
        self.message = "\n".join(lines)
        Exception.__init__(self, self.message)

    def __reduce__(self) -> tuple:
        failures = [(engine_id, failure) for engine_id, _, failure in self.elist]
        return (type(self), (self.method, failures, self.results))

    def __str__(self) -> str:
        return self.message

    def __getitem__(self, excid: int) -> tuple[int | None, str, RemoteFailure]:
        return self._entry(excid)

    def __len__(self) -> int:
        return len(self.elist)

    def _entry(self, excid: int) -> tuple[int | None, str, RemoteFailure]:
        try:
            return self.elist[excid]
        except (IndexError, TypeError):
            raise IndexError(
                f"an exception with index {excid!r} does not exist: this CompositeError "
                f"holds {len(self.elist)} (indices 0 to {len(self.elist) - 1})"
            ) from None

    def raise_exception(self, excid: int = 0) -> NoReturn:
        """Raise the original exception number ``excid`` (type and message).

        IndexError when there is no such exception.  The remote traceback is
        attached as a note (Python 3.11+) or as ``remote_traceback``.
        """
        engine_id, method, failure = self._entry(excid)
        _raise_original(failure, _label(engine_id, method))

    def print_tracebacks(self, excid: int | None = None, file: TextIO | None = None) -> None:
        """Print the remote traceback of exception ``excid`` (None: of each one)."""
        out = file if file is not None else sys.stdout
        entries = self.elist if excid is None else [self._entry(excid)]
        for engine_id, method, failure in entries:
            print(f"{_label(engine_id, method)}:", file=out)
            text = failure.traceback.rstrip("\n") or str(failure)
            print(text, file=out)
            print(file=out)

    def print_traceback(self, file: TextIO | None = None) -> None:
        """Print every remote traceback (as :meth:`print_tracebacks`)."""
        self.print_tracebacks(file=file)


def collect_results(
    method: str, outcomes: Iterable[tuple[int, bool, Any]]
) -> list[Any]:
    """The values of a call made on several engines, or a CompositeError.

    ``outcomes`` are ``(engine_id, ok, value)`` triples in engine order, where
    ``value`` is the call's value when ``ok``, else its :class:`RemoteFailure`.
    Returns the list of values when every engine succeeded; otherwise raises a
    :class:`CompositeError` holding the failures and the successful values.
    """
    values: list[Any] = []
    results: dict[int, Any] = {}
    failures: list[tuple[int, RemoteFailure]] = []
    for engine_id, ok, value in outcomes:
        if ok:
            values.append(value)
            results[engine_id] = value
        else:
            failures.append((engine_id, value))
    if failures:
        raise CompositeError(method, failures, results)
    return values
