"""AsyncResult: the results of submitted tasks, as they arrive.

An :class:`AsyncResult` stands for one or more tasks (``msg_ids``).  It is a
:class:`concurrent.futures.Future` (``result()``, ``done()``,
``add_done_callback``, ``concurrent.futures.wait``, ``await ar`` in asyncio
code) and offers the interface of :class:`multiprocessing.pool.AsyncResult`
(``get``, ``wait``, ``ready``, ``successful``) and more: ``get_dict``,
``metadata`` (with attribute access, and by attribute on the result itself:
``ar.engine_id``), timings (``elapsed``, ``progress``, ``serial_time``,
``wall_time``), ``abort``, ``split``, ``join``, ``display_outputs``.

Results arrive in the reactor thread, one task at a time
(:meth:`AsyncResult._arrived`); waiting happens in the user's thread, on a
condition all the results of a client share (one of its own per result would
be eight more objects for the garbage collector to walk for each task in
flight: with 10,000 in flight, the collector took half the client's time; a
thread waiting on one result wakes for each result of its client, and looks
again).  A task that fails makes ``get`` raise: a
:class:`~plait.wire.errors.RemoteError` for a result of one task, a
:class:`~plait.wire.errors.CompositeError` (keeping the values of the
others) for several.  :class:`AsyncMapResult` joins the chunks of a map and
can be iterated while they arrive; :class:`AsyncHubResult` stands for tasks
another client submitted, fetched from the hub.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from plait.kernel.client import _progress
from plait.kernel.client._base import decode
from plait.parallel._callbacks import call_back
from plait.parallel._connection import LOST
from plait.wire.errors import (
    CompositeError,
    PlaitConnectionError,
    RemoteError,
    RemoteFailure,
    TimeoutError,
)
from plait.wire.records import TaskResultRecord
from plait.wire.serialize import deserialize, is_bulk

ALL_COMPLETED = concurrent.futures.ALL_COMPLETED
FIRST_COMPLETED = concurrent.futures.FIRST_COMPLETED
FIRST_EXCEPTION = concurrent.futures.FIRST_EXCEPTION


class Metadata(dict):
    """A dict with attribute access: ``md.engine_id`` is ``md['engine_id']``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


_FROM_STAMP = datetime.datetime.fromtimestamp
_NOW = datetime.datetime.now


def _when(stamp: float | None) -> datetime.datetime | None:
    return None if not stamp else datetime.datetime.fromtimestamp(stamp)


_BLANK = dict(
    msg_id=None, submitted=None, started=None, completed=None, received=None, engine_id=None,
    engine_uuid=None, status=None, stdout="", stderr="", pyout=None, execute_result=None,
    pyerr=None, error=None, after=None, follow=None, outputs=None, execution_count=None,
)


def new_metadata(msg_id: str, submitted: datetime.datetime | float | None,
                 after: list[str] | None = None, follow: list[str] | None = None
                 ) -> Metadata:
    """The metadata of a task just submitted (``submitted``: a datetime, or seconds
    since the epoch)."""
    md = Metadata(_BLANK)
    md["msg_id"] = msg_id
    md["submitted"] = submitted if not isinstance(submitted, float) else _when(submitted)
    md["after"] = list(after or ())
    md["follow"] = list(follow or ())
    md["outputs"] = []
    return md


def _timeout(value: float | None) -> float | None:
    """ipyparallel's convention: -1 or None wait for ever."""
    return None if value is None or value < 0 else value


class AsyncResult(concurrent.futures.Future):
    """The pending result of tasks submitted by a Client (see the module documentation).

    ``client`` is the Client; ``taskids`` the tasks, in order; ``single``:
    the result is the value of the one task, not a list; ``fname`` names
    the call in errors.
    """

    def __init__(self, client: Any, taskids: list[int], fname: str = "unknown",
                 single: bool = False, targets: Any = None, listen: bool = True,
                 metadata: list[Metadata] | None = None, method: str = "apply"):
        super().__init__()
        # a list once there is one (see add_done_callback)
        self._done_callbacks: list[Callable[[Any], Any]] | tuple[()] = ()
        self._method = method  # the view's method, labelling each engine's error
        self._client = client
        self._ids = tuple(taskids)  # (of ints: not walked by the garbage collector)
        self._index = {taskid: k for k, taskid in enumerate(self._ids)}
        self.msg_ids = [client._msg_id(t) for t in self._ids]
        self._fname = fname
        self._single = single
        self._targets = targets
        # the client's condition, for the Future's state too (see the module
        # documentation): every wait here is a wait_for
        self._condition = self._cond = client._results_condition
        self._values: dict[int, Any] = {}
        self._failures: dict[int, RemoteError | PlaitConnectionError] = {}
        self._order: list[int] = []  # task ids in the order they finished
        # the results split or joined from this one (a tuple: most have none)
        self._observers: tuple[Callable[[int | None], None], ...] = ()
        self._printing = 0  # output previews received (stream_output waits on it)
        self._sent = False
        self._submitted = time.time()
        if metadata is None:
            submitted = datetime.datetime.fromtimestamp(self._submitted)
            metadata = [client._metadata_for(msg_id, submitted) for msg_id in self.msg_ids]
        self._metadata = metadata
        if listen:  # (one bound method each for all the tasks: fewer objects to collect)
            arrived, printed = self._arrived, self._printed
            for taskid in self._ids:
                client._listen(taskid, arrived, printed)
        if not self._ids:
            self._finish()

    # -- arrivals (the reactor thread) ---------------------------------------------------
    def _printed(self, taskid: int, engine_id: int, name: str, text: str) -> None:
        """What a running task printed so far (a preview of its stdout or stderr)."""
        k = self._index.get(taskid)
        if k is None or name not in ("stdout", "stderr"):
            return
        with self._cond:
            if taskid in self._values or taskid in self._failures:
                return  # finished: its record has the whole output
            md = self._metadata[k]
            md["engine_id"] = engine_id
            md[name] = (md.get(name) or "") + text
            self._printing += 1
            self._cond.notify_all()
        for observer in list(self._observers):  # the results split or joined from this
            observer(None)

    def _arrived(self, record: TaskResultRecord) -> None:
        if record.status == LOST:
            self._settle(record, None, PlaitConnectionError(record.stderr))
            return
        payload = record.payload
        if not payload:
            self._decoded(None, record)
        elif is_bulk(payload):  # fetched from the bulk data channel, off the reactor thread
            defer.maybeDeferred(decode, payload).addBoth(self._decoded, record)
        else:
            try:
                value = deserialize(payload)
            except Exception:
                value = Failure()
            self._decoded(value, record)

    def _decoded(self, value: Any, record: TaskResultRecord) -> None:
        error: Any = None
        if isinstance(value, Failure):  # the value could not be fetched or unpickled
            error = RemoteError(RemoteFailure.from_exception(value.value,
                                                             engine_id=record.engineid))
            value = None
        elif record.status != "succeeded":
            failure = value if isinstance(value, RemoteFailure) else RemoteFailure(
                "RemoteException", repr(value), "")
            if failure.engine_id is None:
                failure.engine_id = record.engineid
            failure.method = self._method
            error = RemoteError(failure)
            value = None
        self._settle(record, value, error)

    def _settle(self, record: TaskResultRecord, value: Any, error: Any) -> None:
        taskid = record.taskid
        k = self._index.get(taskid)
        if k is None:
            return
        md = self._metadata[k]
        started = record.engine_started or record.started
        completed = record.engine_completed or record.completed
        md["started"] = _FROM_STAMP(started) if started else None
        md["completed"] = _FROM_STAMP(completed) if completed else None
        md["received"] = _NOW()
        md["engine_id"] = record.engineid
        md["engine_uuid"] = record.engine_uuid
        md["stdout"] = record.stdout
        md["stderr"] = record.stderr
        md["pyout"] = md["execute_result"] = record.pyout
        md["execution_count"] = record.execution_count
        md["status"] = "ok" if error is None else "error"
        md["pyerr"] = md["error"] = error
        self._store(taskid, value, error, self._client._record_result)

    def _known(self, msg: str, value: Any, error: Any) -> None:
        """(Any thread) the client had task ``msg``'s outcome, and its metadata
        (shared with this result): settle it (``get_result`` of one's own task)."""
        self._store(self._client._taskid(msg), value, error, None)

    def _store(self, taskid: int, value: Any, error: Any,
               record: Callable[[str, Any, Any, Metadata], None] | None) -> None:
        k = self._index[taskid]
        with self._cond:
            if taskid in self._values or taskid in self._failures:
                return
            if error is None:
                self._values[taskid] = value
            else:
                self._failures[taskid] = error
            self._order.append(taskid)
            done = len(self._order) == len(self._ids)
            if done:  # (every one reached the controller; one result says so of it alone)
                self._sent = True
            self._cond.notify_all()
        if record is not None:
            record(self.msg_ids[k], value, error, self._metadata[k])
        for observer in list(self._observers):
            observer(taskid)
        if done:
            self._finish()

    def _finish(self) -> None:
        """Every task has finished: settle the Future."""
        if self.done():
            return
        error = self._error()
        if error is not None:
            self.set_exception(error)
        else:
            self.set_result(self._assemble())

    def _error(self) -> BaseException | None:
        if not self._failures:
            return None
        if self._single and len(self._ids) == 1:
            only = self._failures[self._ids[0]]
            if isinstance(only, RemoteError) and only.ename == "TaskAborted":
                # not an error of the task's code: raised as itself, as ipyparallel does
                assert only.failure is not None
                return only.failure.exception()
            return only
        lost = [e for e in self._failures.values() if isinstance(e, PlaitConnectionError)]
        if lost:
            return lost[0]
        failures = []
        results = {}
        for k, taskid in enumerate(self._ids):
            engine_id = self._metadata[k].get("engine_id")
            if taskid in self._failures:
                failure = self._failures[taskid]
                assert isinstance(failure, RemoteError) and failure.failure is not None
                failures.append((engine_id, failure.failure))
            elif engine_id is not None:
                results[engine_id] = self._values.get(taskid)
        return CompositeError(self._fname, failures, results)

    def _assemble(self) -> Any:
        values = [self._values.get(taskid) for taskid in self._ids]
        return values[0] if self._single and len(values) == 1 else values

    # -- the multiprocessing.pool.AsyncResult interface -------------------------------------
    def wait(self, timeout: float | None = -1, return_when: str = ALL_COMPLETED,
             progress: bool | None = None) -> bool:
        """Wait until the tasks are done (or, with ``return_when``, the first one, or
        the first that failed), ``timeout`` seconds at most (-1 or None: for
        ever).  Returns whether they are all done; never raises.  ``progress``:
        show a progress bar (None: in IPython, past a few seconds; see
        :mod:`plait.kernel.client._progress`)."""
        limit = _timeout(timeout)
        if self.done() and progress is not True:
            return True
        self._client._hurry()
        if return_when == ALL_COMPLETED and progress is not False:
            return _progress.wait(lambda: self.progress, len(self._ids), self._wait_done,
                                  limit, progress, self._fname)

        def reached() -> bool:
            if return_when == FIRST_COMPLETED:
                return bool(self._order) or not self._ids
            if return_when == FIRST_EXCEPTION and self._failures:
                return True
            # done(), not "every result arrived": the Future is settled a moment
            # after the last arrival (it notifies this same condition then)
            return self.done()

        with self._cond:
            self._cond.wait_for(reached, limit)
        return self.ready()

    def _wait_done(self, seconds: float | None) -> bool:
        with self._cond:
            self._cond.wait_for(self.done, seconds)
        return self.done()

    def ready(self) -> bool:
        """Whether every task has finished (successfully or not)."""
        return self.done()

    def successful(self) -> bool:
        """Whether every task succeeded; AssertionError while not ready."""
        if not self.ready():
            raise AssertionError(f"{self!r} is not ready yet")
        return self.exception(0) is None

    def get(self, timeout: float | None = -1, return_exceptions: bool = False,
            progress: bool | None = None) -> Any:
        """The result once ready, waiting ``timeout`` seconds at most (-1 or None:
        for ever); TimeoutError past it.  A failure is raised (RemoteError, or
        CompositeError for several tasks), unless ``return_exceptions``: then
        failed tasks give their exception in place of their value.
        ``progress``: as :meth:`wait`'s."""
        if not self.wait(timeout, progress=progress):
            raise TimeoutError(f"{self._fname}: the result is not ready after {timeout} s")
        if return_exceptions:
            values = [self._failures.get(t, self._values.get(t)) for t in self._ids]
            return values[0] if self._single and len(values) == 1 else values
        return super().result(0)

    def result(self, timeout: float | None = None) -> Any:
        """As :meth:`get` (the Future's name)."""
        return self.get(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The Future's ``exception``: the error the result would raise (None if it
        succeeded), waiting ``timeout`` seconds at most (None: for ever);
        TimeoutError past it."""
        with self._cond:
            self._cond.wait_for(self.done, timeout)
        return super().exception(0)

    def cancel(self) -> bool:
        """The Future's ``cancel``: the tasks may have started, so they are aborted
        (:meth:`abort`: one running is interrupted) and this returns False, as
        for a running Future; the AsyncResult then fails with TaskAborted."""
        if not self.done():
            try:
                self.abort()
            except Exception:  # finished meanwhile, or the controller is gone
                pass
        return False

    def add_done_callback(self, fn: Callable[[Any], Any]) -> None:
        """Call ``fn(self)`` once every task has finished, in the client's
        callback thread (never its reactor thread: ``fn`` may block, and
        submit more); at once, in this thread, if they have already."""
        with self._cond:
            if not isinstance(self._done_callbacks, list):
                self._done_callbacks = []
        if self.done():
            super().add_done_callback(fn)  # (called now, here)
        else:
            super().add_done_callback(partial(call_back, fn))

    @property
    def r(self) -> Any:
        """``get()``: the result, waiting for it."""
        return self.get()

    def get_dict(self, timeout: float | None = -1) -> dict[int, Any]:
        """The results keyed by the engine id each ran on (ValueError when two ran
        on the same engine)."""
        values = self.get(timeout)
        if self._single:
            values = [values]
        engines = [md["engine_id"] for md in self._metadata]
        if len(set(engines)) != len(engines):
            raise ValueError(f"cannot key the results by engine: tasks ran on engines "
                             f"{engines}, some more than once")
        return dict(zip(engines, values, strict=True))

    def abort(self) -> None:
        """Keep the tasks not yet run from running; they fail with TaskAborted."""
        self._client.abort(self)

    # -- more --------------------------------------------------------------------------------
    @property
    def metadata(self) -> Any:
        """The metadata of the task (one task) or a list of them."""
        return self._metadata[0] if self._single and len(self._metadata) == 1 else self._metadata

    def __getattr__(self, key: str) -> Any:
        """``ar.engine_id``, ``ar.stdout``...: that key of the metadata (a list
        for several tasks)."""
        if key.startswith("_"):
            raise AttributeError(key)
        metadata = self.__dict__.get("_metadata")
        if not metadata or key not in metadata[0]:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        values = [md[key] for md in metadata]
        return values[0] if self._single and len(values) == 1 else values

    def __getitem__(self, key: Any) -> Any:
        """``ar['engine_id']``: metadata; ``ar[0]``, ``ar[1:3]``: results."""
        if isinstance(key, str):
            return self.__getattr__(key)
        values = self.get()
        return (values if isinstance(values, list) else [values])[key]

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[Any]:
        values = self.get()
        yield from (values if isinstance(values, list) else [values])

    def __await__(self) -> Any:
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        state = "finished" if self.ready() else "pending"
        return f"<{type(self).__name__}({self._fname}): {state}>"

    @property
    def progress(self) -> int:
        """How many of the tasks have finished."""
        return len(self._order)

    @property
    def elapsed(self) -> float:
        """Seconds since submission (until the last result, once all arrived)."""
        if self.ready():
            return self.wall_time
        return time.time() - self._submitted

    @property
    def serial_time(self) -> float:
        """The tasks' run times added up (engine clock), in seconds."""
        total = 0.0
        for md in self._metadata:
            if md.get("started") and md.get("completed"):
                total += (md["completed"] - md["started"]).total_seconds()
        return total

    @property
    def wall_time(self) -> float:
        """Seconds from the first submission to the last result received."""
        received = [md["received"] for md in self._metadata if md.get("received")]
        submitted = [md["submitted"] for md in self._metadata if md.get("submitted")]
        if not received or not submitted:
            return 0.0
        return (max(received) - min(submitted)).total_seconds()

    def wait_interactive(self, interval: float = 0.1, timeout: float | None = -1) -> None:
        """Wait, showing how many tasks are done and for how long: a progress bar in
        Jupyter and in a terminal (tqdm's), else a line rewritten every
        ``interval`` seconds."""
        limit = _timeout(timeout)
        if _progress.bar_here():
            self.wait(timeout, progress=True)
            return
        start = time.monotonic()
        n = len(self)
        while not self.ready():
            if limit is not None and time.monotonic() - start >= limit:
                break
            self.wait(interval)
            sys.stdout.write(f"\r{self.progress:4}/{n:4} tasks finished after {self.elapsed:4.0f} s")
            sys.stdout.flush()
        sys.stdout.write("\ndone\n" if self.ready() else "\n")
        sys.stdout.flush()

    @property
    def sent(self) -> bool:
        """Whether the tasks are known to have reached the controller."""
        return self._sent

    def wait_for_send(self, timeout: float | None = -1) -> bool:
        """Make sure the tasks reached the controller; whether they did."""
        if not self._sent:
            self._client._wait_for_send(_timeout(timeout))
            self._sent = True
        return True

    def stream_output(self, timeout: float | None = -1, file: Any = None) -> bool:
        """Print what the tasks print while they run, as it comes (each line
        headed ``[stdout:engine]``, or ``[stderr:engine]`` on stderr), until they
        have all finished or ``timeout`` seconds passed; whether they finished.
        What they printed before the call is shown first."""
        limit = _timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        shown = [{"stdout": 0, "stderr": 0} for _ in self._ids]
        unended: dict[tuple[int, str], str] = {}  # a line not ended yet, by task and stream
        seen = -1
        self._client._hurry()
        while True:
            with self._cond:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._cond.wait_for(partial(_news_since, self, seen), left)
                seen = self._printing
                finished = self.done()
                news = []
                for k, md in enumerate(self._metadata):
                    for name in ("stdout", "stderr"):
                        text = md.get(name) or ""
                        if len(text) > shown[k][name]:
                            text = unended.pop((k, name), "") + text[shown[k][name]:]
                            shown[k][name] = len(md.get(name) or "")
                            whole, _, rest = text.rpartition("\n")
                            if finished:
                                whole, rest = text, ""
                            if rest:
                                unended[(k, name)] = rest
                            if whole:
                                news.append((md.get("engine_id"), name, whole))
                if finished:
                    news.extend((self._metadata[k].get("engine_id"), name, text)
                                for (k, name), text in unended.items())
                    unended.clear()
            for engine_id, name, text in news:
                stream = file if file is not None else (
                    sys.stdout if name == "stdout" else sys.stderr)
                _print_stream(name, engine_id, text, stream)
            if finished:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def display_outputs(self, groupby: str = "type", result_only: bool = False) -> None:
        """Print what each task wrote and showed, engine by engine: ``[stdout:0] ...``
        and ``[stderr:0] ...`` lines, display outputs (``[output:0] ...``), and the
        value of code ending in an expression (``Out[0]: ...``; ``Out[0:n]`` when the
        engine gives its execution count ``n``).

        ``groupby`` 'type': every engine's stdout, then every stderr, then the
        display outputs, then the values; 'engine': all of one engine, then the
        next; 'order': as 'type', but the display outputs collated: the first of
        each engine, then the second of each, and so on.  ``result_only``: the
        values alone (the streams were shown already, by :meth:`stream_output`).
        """
        if groupby not in ("type", "engine", "order"):
            raise ValueError(f"groupby is 'type', 'engine' or 'order', not {groupby!r}")
        mds: list[dict] = list(self._metadata)
        for group in ([[md] for md in mds] if groupby == "engine" else [mds]):
            if not result_only:
                for md in group:
                    _print_stream("stdout", md.get("engine_id"), md.get("stdout") or "",
                                  sys.stdout)
                for md in group:
                    _print_stream("stderr", md.get("engine_id"), md.get("stderr") or "",
                                  sys.stderr)
                _print_outputs(group, collate=groupby == "order")
            for md in group:
                _print_pyout(md)

    # -- splitting and joining ------------------------------------------------------------
    def split(self) -> tuple[AsyncResult, ...]:
        """One AsyncResult per task."""
        return tuple(self._derived([taskid], single=True) for taskid in self._ids)

    @classmethod
    def join(cls, *results: AsyncResult) -> AsyncResult:
        """One AsyncResult for the tasks of several (of one client)."""
        if not results:
            raise ValueError("join needs at least one AsyncResult")
        client = results[0]._client
        if any(r._client is not client for r in results):
            raise ValueError("cannot join the AsyncResults of different clients")
        ids = [taskid for r in results for taskid in r._ids]
        joined = AsyncResult(client, ids, "join", listen=False,
                             metadata=[md for r in results for md in r._metadata])
        for r in results:
            r._feed(joined)
        return joined

    def __add__(self, other: AsyncResult) -> AsyncResult:
        return AsyncResult.join(self, other)

    def _derived(self, taskids: list[int], single: bool) -> AsyncResult:
        child = AsyncResult(self._client, taskids, self._fname, single=single, listen=False,
                            method=self._method,
                            metadata=[self._metadata[self._index[t]] for t in taskids])
        self._feed(child)
        return child

    def _feed(self, other: AsyncResult) -> None:
        """Have ``other`` receive this one's results, those arrived already included."""

        def pass_on(taskid: int | None) -> None:
            if taskid is None:  # news of output (the metadata dicts are shared)
                with other._cond:
                    other._printing += 1
                    other._cond.notify_all()
                return
            if taskid not in other._index:
                return
            with other._cond:
                if taskid in other._order:
                    return
                if taskid in self._failures:
                    other._failures[taskid] = self._failures[taskid]
                else:
                    other._values[taskid] = self._values.get(taskid)
                other._order.append(taskid)
                other._sent = True
                done = len(other._order) == len(other._ids)
                other._cond.notify_all()
            for observer in list(other._observers):
                observer(taskid)
            if done:
                other._finish()

        with self._cond:
            arrived = list(self._order)
            self._observers = (*self._observers, pass_on)
        for taskid in arrived:
            pass_on(taskid)


def _print_stream(name: str, engine_id: Any, text: str, stream: Any) -> None:
    if text:
        print(f"[{name}:{engine_id}] " + text.rstrip("\n").replace("\n", f"\n[{name}:"
                                                                    f"{engine_id}] "),
              file=stream)


def _print_outputs(mds: list[dict], collate: bool) -> None:
    """The display outputs of tasks, task by task; collated: the first of each
    task, then the second... (an output: its text/plain form when it is a display
    message's data)."""
    pending = [(md.get("engine_id"), list(md.get("outputs") or [])) for md in mds]
    while any(outputs for _, outputs in pending):
        for engine_id, outputs in pending:
            for output in (outputs[:1] if collate else outputs):
                data = output.get("data") if isinstance(output, dict) else None
                text = data.get("text/plain", "") if isinstance(data, dict) else output
                _print_stream("output", engine_id, str(text), sys.stdout)
            del outputs[:1 if collate else len(outputs)]


def _print_pyout(md: dict) -> None:
    """``Out[engine]: value`` (``Out[engine:count]`` with the engine's execution count)."""
    pyout = md.get("pyout")
    if pyout is None:
        return
    count = md.get("execution_count")
    where = md.get("engine_id") if not isinstance(count, int) else f"{md.get('engine_id')}:{count}"
    multiline = "\n" in pyout and not pyout.startswith("\n")
    print(f"Out[{where}]:\n{pyout}" if multiline else f"Out[{where}]: {pyout}")


class AsyncMapResult(AsyncResult):
    """The result of a map: each task computed a chunk (a list); the result is
    their concatenation.  Iterating yields the elements while they arrive: in
    order, or, with ``ordered=False``, chunk by chunk as they finish."""

    def __init__(self, client: Any, taskids: list[int], fname: str = "map",
                 ordered: bool = True, joiner: Callable[[list], Any] | None = None,
                 **kwargs: Any):
        self.ordered = ordered
        self._joiner = joiner  # how the chunks join (default: concatenated lists)
        super().__init__(client, taskids, fname, **kwargs)

    def _assemble(self) -> Any:
        if self._joiner is not None:
            return self._joiner([self._values.get(taskid) for taskid in self._ids])
        out: list[Any] = []
        for taskid in self._ids:
            out.extend(self._values.get(taskid) or [])
        return out

    def get(self, timeout: float | None = -1, return_exceptions: bool = False,
            progress: bool | None = None) -> Any:
        if not return_exceptions:
            return super().get(timeout, progress=progress)
        if not self.wait(timeout, progress=progress):
            raise TimeoutError(f"{self._fname}: the result is not ready after {timeout} s")
        out: list[Any] = []
        for taskid in self._ids:
            if taskid in self._failures:
                out.append(self._failures[taskid])
            else:
                out.extend(self._values.get(taskid) or [])
        return out

    def __iter__(self) -> Iterator[Any]:
        order = iter(self._ids)
        seen = 0
        while True:
            with self._cond:
                if self.ordered:
                    taskid = next(order, None)
                    if taskid is None:
                        return
                    self._cond.wait_for(partial(_arrived, self, taskid))
                else:
                    if seen == len(self._ids):
                        return
                    self._cond.wait_for(partial(_more_than, self, seen))
                    taskid = self._order[seen]
                    seen += 1
                error = self._failures.get(taskid)
                chunk = self._values.get(taskid)
            if error is not None:
                raise error
            yield from chunk or []

    def __len__(self) -> int:
        return len(self._ids)

    def _elements(self, deadline: float | None) -> Iterator[Any]:
        """The elements in order, each awaited until ``deadline`` (a
        ``time.monotonic()``, None: for ever): TimeoutError past it; a failed
        chunk raises its error when reached (``Executor.map``'s way)."""
        for taskid in self._ids:
            with self._cond:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._cond.wait_for(partial(_arrived, self, taskid), left):
                    raise TimeoutError(f"{self._fname}: results not ready in time")
                error = self._failures.get(taskid)
                chunk = self._values.get(taskid)
            if error is not None:
                raise error
            yield from chunk or []


def _news_since(result: AsyncResult, seen: int) -> bool:
    return result._printing != seen or result.done()


def _arrived(result: AsyncResult, taskid: int) -> bool:
    return taskid in result._values or taskid in result._failures


def _more_than(result: AsyncResult, n: int) -> bool:
    return len(result._order) > n


class AsyncHubResult(AsyncResult):
    """Tasks this client did not submit (or no longer follows): their records
    come from the hub, which is asked to answer once they have finished."""

    def __init__(self, client: Any, taskids: list[int], fname: str = "get_result",
                 fetch: bool = True, **kwargs: Any):
        super().__init__(client, taskids, fname, listen=False, **kwargs)
        if taskids and fetch:  # (resubmit hears of its new tasks by itself)
            client._fetch_from_hub(taskids, self._arrived)
