"""The asynchronous TaskClient (the blocking ``TaskClient`` is derived from it).

Every method returns a Deferred.  The client submits tasks
(:mod:`plait.kernel.client._tasks`) without naming engines; the controller's
scheduler places them.  See :mod:`plait.kernel.client._submit` for how ``run``
returns ids at once, and :mod:`plait.kernel.client._taskmap` for ``map``.

Results fetched once are kept in the client (until :meth:`clear`), so asking
again costs nothing; values too large to travel inline (above 1 MiB) come
through the bulk data channel, which serves each of them once, so keeping
them here is what lets them be asked for again.

Each client is one *session* of the controller, submitting as every
session does (:mod:`plait.kernel.client._session`): ids reserved in blocks,
submissions buffered for speed and confirmed by ``wait_for_send``, ``close``
and the end of the process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer

from plait.interfaces.task import RITaskController
from plait.kernel.client._base import (
    all_of,
    asynchronous,
    counted,
    decode,
)
from plait.kernel.client._mapping import Mapper, ParallelFunction, decorator
from plait.kernel.client._progress import Tally, tally_groups
from plait.kernel.client._session import SessionClient
from plait.kernel.client._taskmap import check_map_options, map_tasks
from plait.kernel.client._tasks import TaskResult
from plait.security import TC_FURL
from plait.wire.errors import InvalidTaskID
from plait.wire.records import decode_result
from plait.wire.task import TASK_ID_LIMIT, TaskSpec, task_ids


def _check_id(taskid: Any) -> int:
    """``taskid`` if it can name a task: TypeError for a non-int, InvalidTaskID
    for an int no task can have (negative, or too large for the wire)."""
    if isinstance(taskid, bool) or not isinstance(taskid, int):
        raise TypeError(f"a task id is an int (as returned by run), not {taskid!r}")
    if not 0 <= taskid < TASK_ID_LIMIT:
        raise InvalidTaskID(
            f"no task with id {taskid}: task ids are ints from 0 to 2**64 - 1"
        )
    return taskid


def _id_list(taskids: Any) -> list[int]:
    return [_check_id(t) for t in task_ids(taskids)]


class TaskClientHelpers:
    """What both TaskClients offer, written with their public methods:
    ``mapper``, ``parallel`` and the old name of ``wait_for_send``."""

    map: Callable[..., Any]
    wait_for_send: Callable[[], Any]

    def mapper(self, chunksize: int | None = None, **options: Any) -> Mapper:
        """A :class:`~plait.kernel.client.Mapper` whose ``map`` is this client's
        load-balanced ``map`` with ``chunksize`` and the task ``options``
        (retries, clear_before, clear_after, depend, timeout)."""
        check_map_options(chunksize, options)
        return Mapper(self, chunksize=chunksize, **options)

    def _map_with(self, function: Callable[..., Any], sequences: tuple, options: dict) -> Any:
        """What a :class:`Mapper` of this client runs."""
        return self.map(function, *sequences, **options)

    def parallel(self, chunksize: int | None = None, **options: Any
                 ) -> Callable[[Callable[..., Any]], ParallelFunction]:
        """A decorator making a function of one element a
        :class:`~plait.kernel.client.ParallelFunction`, load balanced::

            @tc.parallel()
            def f(x):
                return 10.0 * x ** 4

            f(range(32))   # load balanced over the engines
        """
        return decorator(self.mapper(chunksize, **options))

    def flush(self) -> Any:
        """Deprecated: the old name of :meth:`wait_for_send` (``mec.flush()``
        is something else: it drops stored results)."""
        warnings.warn(
            "TaskClient.flush() is deprecated: call wait_for_send(), which does the same "
            "(MultiEngineClient.flush() drops stored results, a different thing)",
            DeprecationWarning, stacklevel=2,
        )
        return self.wait_for_send()


class AsyncTaskClient(TaskClientHelpers, SessionClient):
    """Submit tasks to a controller's load-balanced task interface (Twisted API).

    Create one with :meth:`connect`.  See :class:`~plait.kernel.client.TaskClient`
    for the blocking client most users want.
    """

    furl_name = TC_FURL
    remote_interface = RITaskController

    def __init__(self, remote: Any, source: str = ""):
        super().__init__(remote, source)
        self._results: dict[int, TaskResult] = {}

    # -- results -------------------------------------------------------------------------
    def _result(self, data: bytes | None, keep: bool) -> Any:
        """A TaskResult (or a Deferred of one) from an encoded record; None stays None."""
        if data is None:
            return None
        record = decode_result(data)

        def made(value: Any) -> TaskResult:
            result = TaskResult(record, value)
            if keep:
                self._results[record.taskid] = result
            return result

        return defer.maybeDeferred(decode, record.payload).addCallback(made)

    def _check_refused(self, ids: list[int]) -> None:
        for taskid in ids:
            error = self._submitter.refusal(taskid)
            if error is not None:
                raise error

    @asynchronous
    def get_task_result(self, taskid: int, block: bool = False) -> defer.Deferred:
        """A Deferred firing with the :class:`TaskResult` of the task once
        finished; with None at once while it is not (unless ``block``: then
        it waits).  A failed task's result carries its failure: this fails
        only with InvalidTaskID (an id never issued, or cleared),
        TaskSubmissionError, PlaitConnectionError or SerializationError (a
        value that cannot be unpickled here).
        """
        try:
            _check_id(taskid)
            self._check_refused([taskid])
        except Exception:
            return defer.fail()
        if taskid in self._results:
            return defer.succeed(self._results[taskid])
        d = self._send("get_task_result", taskid, bool(block))
        return d.addCallback(self._result, True)

    @asynchronous
    @counted("results")
    def get_task_results(self, taskids: Iterable[int], block: bool = False, *,
                         tally: Tally | None = None) -> defer.Deferred:
        """A Deferred firing with the list of :class:`TaskResult` s of ``taskids``
        (None where unfinished; with ``block``, once all are finished), in
        one call.  Fails as :meth:`get_task_result` does.  With ``block`` and
        ``tally`` it counts the results as they come (the blocking client's
        ``progress=``), fetched in runs of them."""
        if tally is None or not block:  # (a call that does not wait counts nothing)
            return self._results_of(taskids, block, keep=True)
        try:
            ids = _id_list(taskids)
            self._check_refused(ids)
        except Exception:
            return defer.fail()
        tally.total = len(ids)
        runs = [self._results_of(run, True, keep=True).addCallback(tally.passing)
                for run in tally_groups(ids)]
        return all_of(runs).addCallback(lambda got: [r for run in got for r in run])

    def _results_of(self, taskids: Any, block: bool, keep: bool) -> defer.Deferred:
        try:
            ids = _id_list(taskids)
            self._check_refused(ids)
        except Exception:
            return defer.fail()
        missing = [t for t in dict.fromkeys(ids) if t not in self._results]
        if not missing:
            return defer.succeed([self._results[t] for t in ids])

        def got(records: list) -> defer.Deferred:
            return all_of([defer.maybeDeferred(self._result, r, keep) for r in records])

        def assemble(results: list) -> list:
            fetched = dict(zip(missing, results, strict=True))
            return [fetched[t] if t in fetched else self._results[t] for t in ids]

        d = self._send("get_task_results", missing, bool(block)).addCallback(got)
        return d.addCallback(assemble)

    # -- control ---------------------------------------------------------------------
    @asynchronous
    @counted("barrier")
    def barrier(self, taskids: int | Iterable[int], *, tally: Tally | None = None
                ) -> defer.Deferred:
        """A Deferred firing with None once every task in ``taskids`` (an id or
        a list) has finished, whatever its outcome.

        Fails at once with InvalidTaskID if an id is unknown (TypeError for
        something that is not an id).  Tasks on an engine that dies finish
        too (failed or retried), so this never hangs on a dead engine.  With
        ``tally`` it counts the tasks finished as they finish (the blocking
        client's ``progress=``), waiting on at most
        :data:`~plait.kernel.client._progress.TALLY_STEPS` groups of them.
        """
        try:
            ids = _id_list(taskids)
            self._check_refused(ids)
        except Exception:
            return defer.fail()
        pending = [t for t in ids if t not in self._results]
        if tally is not None:
            tally.total, tally.done = len(ids), len(ids) - len(pending)
        if not pending:
            return defer.succeed(None)
        if tally is None:
            return self._send("barrier", pending)
        waits = [self._send("barrier", group).addCallback(tally.passing, len(group))
                 for group in tally_groups(pending)]
        return all_of(waits).addCallback(lambda _: None)

    @asynchronous
    def queue_status(self, verbose: bool = False) -> defer.Deferred:
        """A Deferred firing with ``{state: count}`` over ``'scheduled'``,
        ``'pending'``, ``'succeeded'``, ``'failed'`` and ``'aborted'`` (with
        ``verbose``, ``{state: sorted list of ids}``), counting the tasks of
        every client that are not cleared."""
        return self._send("queue_status", bool(verbose))

    @asynchronous
    def abort(self, taskid: int) -> defer.Deferred:
        """Abort a task that has not finished; a Deferred firing with None.

        A scheduled task never runs; a running one is interrupted on its engine.
        Its result then says it was aborted (a TaskAborted failure).  Fails
        with TaskAlreadyCompleted (an IndexError) for a task already
        finished, InvalidTaskID for an unknown id."""
        try:
            _check_id(taskid)
        except Exception:
            return defer.fail()
        return self._send("abort", taskid)

    @asynchronous
    def spin(self) -> defer.Deferred:
        """Ask the scheduler for a pass; a Deferred firing with None (rarely
        needed: property changes and engine arrivals start one by themselves)."""
        return self._send("spin")

    @asynchronous
    def clear(self, taskids: int | Iterable[int] | None = None, all_clients: bool = False
              ) -> defer.Deferred:
        """Forget finished tasks here and in the controller: ``taskids``, else all
        that this client submitted, or every client's with ``all_clients=True``.

        A Deferred firing with how many the controller forgot.  Fails with
        ValueError when a listed task has not finished, InvalidTaskID for an
        unknown id (nothing is forgotten then).
        """
        try:
            ids = None if taskids is None else _id_list(taskids)
        except Exception:
            return defer.fail()

        def forget(n: int) -> int:
            if ids is None:
                self._results.clear()
            else:
                for taskid in ids:
                    self._results.pop(taskid, None)
            self._submitter.forget(ids)
            return n

        return self._send("clear", ids is None, ids or [],
                          bool(all_clients)).addCallback(forget)

    @asynchronous
    def info(self) -> defer.Deferred:
        """A Deferred firing with ``{'scheme': name, 'hwm': the high water mark
        (None: adaptive), 'engines': how many now, 'marks': {engine id: its
        current mark}}``."""
        return self._send("info")

    @asynchronous
    @counted("map")
    def map(self, function: Any, *sequences: Any, chunksize: int | None = None,
            tally: Tally | None = None, **options: Any) -> defer.Deferred:
        """A Deferred firing with ``list(map(function, *sequences))``, computed
        by load-balanced tasks.

        ``chunksize`` fixes the items per task (default: guided chunks);
        ``options`` are task options (retries, clear_before, clear_after,
        depend, timeout).  Fails with TypeError / ValueError for bad
        arguments, else with the exception of the first chunk that failed
        (the chunks already submitted are aborted and cleared when the map
        fails before collecting them).  With ``tally``, it counts the chunks
        (tasks) done as they finish (the blocking client's ``progress=``).
        See :mod:`plait.kernel.client._taskmap`.
        """
        return map_tasks(self, function, sequences, chunksize, options, tally)


class BlockingRunMixin:
    """``run`` of the blocking TaskClient (it encodes in the calling thread), and
    ``with TaskClient() as tc:`` (closed at the end of the block)."""

    _async: AsyncTaskClient

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()  # type: ignore[attr-defined]

    def run(self, task: TaskSpec) -> int:
        """Submit ``task`` (a StringTask or MapTask); returns its int id at once.

        Raises TaskSpecError / RecoveryLoopError / SerializationError when
        the task cannot be submitted (a bad attribute, a recovery loop,
        something that cannot be pickled).  The result is fetched with
        :meth:`get_task_result`; :meth:`barrier` waits for tasks to finish.
        """
        return self._async.run_from_thread(task)
