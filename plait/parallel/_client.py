"""The Client of the later API generation: ``plait.parallel.Client``.

``Client()`` connects to the controller of the default profile with its
``ipcontroller-client.furl`` (``Client(profile='x')``, or
``Client('/path/to/ipcontroller-client.furl')``).  It hands out views
(``rc[:]``, ``rc[0]``, ``rc.load_balanced_view()``), keeps what its tasks
produced (``history``, ``results``, ``metadata``, ``outstanding``) and
queries the hub, which records every task of every client: ``get_result``,
``result_status``, ``purge_results``, ``hub_history``, ``db_query``,
``resubmit``, ``queue_status``.

It runs on the same connection core as the kernel generation's clients:
:class:`~plait.parallel._connection.ParallelConnection`, an asynchronous
session client, with its blocking twin derived generically.
"""

from __future__ import annotations

import builtins
import datetime
import functools
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from plait.kernel.client import _progress, _reactor
from plait.kernel.client._blocking import derive_blocking
from plait.parallel._asyncresult import (
    AsyncHubResult,
    AsyncMapResult,
    AsyncResult,
    Metadata,
    new_metadata,
)
from plait.parallel._connection import ParallelConnection, _lost_record
from plait.parallel._view import DirectView, LoadBalancedView
from plait.wire.errors import (
    InvalidEngineID,
    InvalidTaskID,
    NoEnginesRegistered,
    PlaitConnectionError,
    RemoteError,
    RemoteFailure,
    TimeoutError,
)
from plait.wire.records import TaskResultRecord, msg_id_maker, msg_ids, taskid_of
from plait.wire.serialize import collector_paused, serialize
from plait.wire.task import TaskSpec

_BlockingConnection = derive_blocking(ParallelConnection, "_BlockingConnection")


def _timeout(value: float | None) -> float | None:
    return None if value is None or value < 0 else value


def _left(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (a monotonic time; None: no limit)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _stamp(value: Any) -> Any:
    """A datetime in a query, as the hub's timestamps (seconds since the epoch)."""
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: _stamp(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stamp(v) for v in value]
    return value


#: ipyparallel's Client options.  ``sshserver`` and ``sshkey`` tunnel every connection
#: through SSH (see plait.wire.tunnel); the others are accepted so that its code runs,
#: and unused: a FURL file says where the controller is and how to reach it securely.
_ACCEPTED = frozenset({"cluster_id", "context", "debug", "sshserver", "sshkey", "password",
                       "paramiko", "timeout", "url_or_file", "profile_dir", "ipython_dir",
                       "exec_key", "packer", "unpacker", "session", "cluster", "username"})

_TIMES = ("submitted", "started", "completed", "engine_started", "engine_completed")


@functools.lru_cache(maxsize=32)
def _record_maker(names: tuple[str, ...]) -> Callable[..., dict]:
    """A function of one value per name making the dict ``{name: value}``: a
    dict display, twice as fast as ``dict(zip(names, values))`` over 100,000
    records (the names are the hub's columns, checked; written as literals)."""
    params = ", ".join(f"_{k}" for k in range(len(names)))
    items = ", ".join(f"{name!r}: _{k}" for k, name in enumerate(names))
    return eval(f"lambda {params}: {{{items}}}")  # noqa: S307 (made of checked names)


class Client:
    """A connection to a plait cluster (see the module documentation).

    ``Client(url_file=None, profile=None)``: ``url_file`` is a FURL, or the
    path of a FURL file; by default the ``ipcontroller-client.furl`` of
    ``profile`` (default 'default').  ``sshserver='user@host'`` (with
    ``sshkey``, an identity file) reaches the controller through an SSH
    tunnel to that host, as from outside a login node.
    """

    def __init__(self, url_file: Any = None, profile: str | None = None, **options: Any):
        unknown = sorted(set(options) - _ACCEPTED)
        if unknown:
            raise TypeError(f"Client() got unexpected arguments {unknown}; it takes url_file, "
                            f"profile and the ipyparallel options {sorted(_ACCEPTED)} (which "
                            f"plait's FURL connection has no use for)")
        if options.get("password") is not None or options.get("paramiko"):
            raise TypeError("plait's SSH tunnels are OpenSSH's, with keys (sshkey=, or "
                            "ssh-agent): give no password= or paramiko=")
        if url_file is None:  # ipyparallel's older name of the first argument
            url_file = options.get("url_or_file")
        self._conn = _BlockingConnection(url_file, profile, sshserver=options.get("sshserver"),
                                         sshkey=options.get("sshkey"))
        self._async: ParallelConnection = self._conn.asynchronous
        self._prefix = self._async.prefix
        self._msg_id = msg_id_maker(self._prefix)  # task id -> msg_id
        self.block = False
        self.history: list[str] = []
        self.results: dict[str, Any] = {}
        self.metadata: dict[str, Metadata] = {}
        self._outstanding: set[str] = set()
        # AsyncResults of get_result() following this client's tasks still running
        self._followers: dict[str, list[weakref.WeakMethod]] = {}
        self._lock = threading.Lock()
        self._finished = threading.Condition(self._lock)  # notified as results arrive
        #: The condition every AsyncResult of this client waits on (see AsyncResult).
        self._results_condition = threading.Condition(threading.RLock())
        self._closed = False

    # -- engines and views -------------------------------------------------------------
    @property
    def ids(self) -> list[int]:
        """The ids of the engines registered (the controller keeps this up to date)."""
        return list(self._async.engine_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: Any) -> DirectView:
        """``rc[0]``, ``rc[:]``, ``rc[::2]``, ``rc[[0, 2]]``: a DirectView."""
        if isinstance(key, slice):
            return DirectView(self, self.ids[key])
        if isinstance(key, (int, list, tuple, range)) and not isinstance(key, bool):
            return DirectView(self, key if isinstance(key, int) else list(key))
        raise TypeError(f"index a Client with an engine id, a slice or a list, not {key!r}")

    def direct_view(self, targets: Any = "all") -> DirectView:
        """A DirectView of ``targets`` ('all': every engine, whenever a call is made)."""
        return DirectView(self, targets)

    @property
    def dashboard_url(self) -> str | None:
        """The URL of the controller's status page, its token included (None when
        it serves none)."""
        return self._async.info_at_connect.get("dashboard_url")

    def load_balanced_view(self, targets: Any = None) -> LoadBalancedView:
        """A LoadBalancedView choosing among ``targets`` (None: every engine)."""
        return LoadBalancedView(self, targets)

    def executor(self, targets: Any = None) -> Any:
        """A :class:`concurrent.futures.Executor` over a load-balanced view of
        ``targets`` (None: every engine): ``submit``, ``map``, ``shutdown``."""
        return self.load_balanced_view(targets).executor

    def wait_for_engines(self, n: int | None = None, timeout: float | None = -1,
                         block: bool = True) -> Any:
        """Wait until ``n`` engines are registered (at least one when None); their ids.

        TimeoutError after ``timeout`` seconds (-1: wait for ever).
        """
        count = 1 if n is None else n
        try:
            return _reactor.call(self._async.wait_for_engines, count, timeout=_timeout(timeout))
        except builtins.TimeoutError as exc:
            raise TimeoutError(f"{len(self.ids)} engines registered after {timeout} s; "
                               f"waited for {count}") from exc

    def _engine_ids(self, targets: Any) -> list[int]:
        """``targets`` as a list of registered engine ids; InvalidEngineID otherwise."""
        ids = self.ids
        if targets is None or (isinstance(targets, str) and targets == "all"):
            if not ids:
                raise NoEnginesRegistered("the controller has no engines: start some, or "
                                          "wait for them with rc.wait_for_engines(n)")
            return ids
        wanted = [targets] if isinstance(targets, int) else targets
        if isinstance(wanted, (list, tuple, range)):
            wanted = list(wanted)
            bad = [t for t in wanted if isinstance(t, bool) or not isinstance(t, int)
                   or t not in ids]
            if not bad:
                return wanted
            raise InvalidEngineID(f"no engine with id {bad[0]!r}; registered engines: {ids}")
        raise TypeError(f"targets are 'all', an engine id or a list of ids, not {targets!r}")

    # -- submitting (the views) -------------------------------------------------------------
    def _taskid(self, text: Any) -> int | None:
        return taskid_of(self._prefix, text)

    def _job_taskid(self, job: Any) -> tuple[str, int]:
        """``(msg_id, task id)`` of ``job``: a msg_id, or an index into the history.
        ValueError for a msg_id of another controller."""
        if isinstance(job, int) and not isinstance(job, bool):
            job = self.history[job]
        taskid = self._taskid(job)
        if taskid is None:
            raise ValueError(f"{job!r} is not a msg_id of this controller")
        return job, taskid

    def _metadata_for(self, msg: str, submitted: datetime.datetime) -> Metadata:
        md = new_metadata(msg, submitted)
        self.metadata[msg] = md
        return md

    def _listen(self, taskid: int, listener: Any, output: Any = None) -> None:
        if output is not None:
            self._async.listen_output(taskid, output)
        self._async.listen(taskid, listener)

    def _submit(self, specs: list[TaskSpec], fname: str, single: bool = False,
                mapping: bool = False, ordered: bool = True, pickler: str = "cloudpickle",
                joiner: Any = None, method: str = "apply") -> AsyncResult:
        conn = self._async
        datas = [conn.prepare_from_thread(spec, pickler) for spec in specs]
        ids = [conn.take_id_from_thread() for _ in datas]
        ar: AsyncResult
        if mapping:
            ar = AsyncMapResult(self, ids, fname, ordered=ordered, joiner=joiner, method=method)
        else:
            ar = AsyncResult(self, ids, fname, single=single, method=method)
        for spec, md in zip(specs, ar._metadata, strict=True):
            md["after"] = [] if spec.after is None else [self._msg_id(t) for t in spec.after.ids]
            md["follow"] = [] if spec.follow is None else [self._msg_id(t)
                                                            for t in spec.follow.ids]
        with self._lock:
            self.history.extend(ar.msg_ids)
            self._outstanding.update(ar.msg_ids)
        for taskid, data in zip(ids, datas, strict=True):
            conn.enqueue(taskid, data)
        return ar

    def _record_result(self, msg: str, value: Any, error: Any, md: Metadata) -> None:
        """(The reactor thread) a task's result arrived."""
        with self._lock:
            self.results[msg] = error if error is not None else value
            self._outstanding.discard(msg)
            followers = self._followers.pop(msg, ())
            self._finished.notify_all()
        for follow in followers:
            known = follow()
            if known is not None:
                known(msg, value, error)

    def _hurry(self) -> None:
        self._async.hurry()

    def _wait_for_send(self, timeout: float | None) -> None:
        _reactor.call(self._async.wait_for_send, timeout=timeout)

    def _fetch_from_hub(self, taskids: list[int], listener: Any) -> None:
        """Have ``listener(record)`` called for each of ``taskids`` once finished (hub)."""

        def deliver(records: list) -> None:
            for taskid, record in zip(taskids, records, strict=True):
                if record is None:  # purged meanwhile
                    error = InvalidTaskID(f"no task {self._msg_id(taskid)}: purged")
                    record = TaskResultRecord(taskid, "failed", serialize(
                        RemoteFailure.from_exception(error)))
                listener(record)

        def fetch() -> None:
            self._async.records(list(taskids), True).addCallback(deliver).addErrback(
                lambda f: [listener(_lost_record(t, f)) for t in taskids])

        _reactor.call(fetch)

    @property
    def outstanding(self) -> set[str]:
        """The msg_ids of this client's tasks not finished yet."""
        with self._lock:
            return set(self._outstanding)

    # -- results ------------------------------------------------------------------------------
    def _taskids(self, jobs: Any) -> list[int]:
        """``jobs`` (msg_ids, history indices, AsyncResults, or lists of them) as task ids."""
        if jobs is None:
            jobs = list(self._outstanding)
        if isinstance(jobs, (str, int, AsyncResult)):
            jobs = [jobs]
        ids: list[int] = []
        for job in jobs:
            if isinstance(job, AsyncResult):
                ids.extend(job._ids)
                continue
            ids.append(self._job_taskid(job)[1])
        return ids

    def get_result(self, indices_or_msg_ids: Any = None, block: bool | None = None,
                   owner: bool = True) -> AsyncResult:
        """An AsyncResult for tasks given by msg_id (or index in ``history``; default
        the last): an AsyncResult when this client submitted them all and still
        keeps them (its ``results``, or still running), as ipyparallel answers;
        otherwise an AsyncHubResult, fetched from the hub.  InvalidTaskID for a
        msg_id the hub does not know."""
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        ids = self._taskids(indices_or_msg_ids)
        single = isinstance(indices_or_msg_ids, (str, int))
        ar = self._own_result(ids, single)
        if ar is None:
            self._check_known(ids)
            ar = AsyncHubResult(self, ids, single=single)
        if block if block is not None else self.block:
            ar.wait()
        return ar

    def _own_result(self, taskids: list[int], single: bool) -> AsyncResult | None:
        """An AsyncResult of tasks this client submitted and still keeps, sharing
        their metadata, or None when one of them is not such a task."""
        msgs = [self._msg_id(t) for t in taskids]
        with self._lock:
            if not msgs or not all((m in self._outstanding or m in self.results)
                                   and m in self.metadata for m in msgs):
                return None
            ar = AsyncResult(self, taskids, "get_result", single=single, listen=False,
                             metadata=[self.metadata[m] for m in msgs])
            known = [(m, self.results[m]) for m in msgs if m not in self._outstanding]
            follow = weakref.WeakMethod(ar._known)  # (dropped with the result)
            for m in msgs:
                if m in self._outstanding:
                    following = self._followers.setdefault(m, [])
                    if len(following) >= 8:  # (get_result polled: forget the dropped ones)
                        following[:] = [f for f in following if f() is not None]
                    following.append(follow)
        for msg, outcome in known:
            failed = isinstance(outcome, (RemoteError, PlaitConnectionError))
            ar._known(msg, None if failed else outcome, outcome if failed else None)
        return ar

    def _check_known(self, taskids: list[int]) -> None:
        """InvalidTaskID naming the tasks the hub does not know (never submitted, purged)."""
        unknown = self._conn.result_status(taskids)["unknown"] if taskids else []
        if unknown:
            raise self._unknown(unknown)

    def _unknown(self, taskids: list[int]) -> InvalidTaskID:
        why = ("this controller's hub keeps no records (ipcontroller --db none)"
               if self._async.info_at_connect.get("db") == "none"
               else "never submitted, or purged")
        return InvalidTaskID(f"no tasks {[self._msg_id(t) for t in taskids]} in the hub: {why}")

    def wait(self, jobs: Any = None, timeout: float | None = -1,
             progress: bool | None = None) -> bool:
        """Wait for tasks (msg_ids, AsyncResults, history indices; by default this
        client's outstanding ones), ``timeout`` seconds at most (-1 or None: for
        ever); whether all are done.  Never raises for a task that failed.
        ``progress``: show a progress bar (None: in IPython, past a few seconds)."""
        limit = _timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        if jobs is None:
            jobs = self.outstanding
        elif isinstance(jobs, (str, int, AsyncResult)):
            jobs = [jobs]
        mine: list[str] = []
        results: list[AsyncResult] = []
        foreign: list[int] = []
        for job in jobs:
            if isinstance(job, AsyncResult):
                results.append(job)
                continue
            job, taskid = self._job_taskid(job)
            if job in self.results or job in self._outstanding:
                mine.append(job)
            else:
                foreign.append(taskid)
        if foreign:
            unknown = set(self._conn.result_status(foreign)["unknown"])
            if unknown:  # this client's, purged here and in the hub: done, as ipyparallel says
                own = set(self.history)
                bad = [t for t in foreign if t in unknown and self._msg_id(t) not in own]
                if bad:
                    raise self._unknown(bad)
                foreign = [t for t in foreign if t not in unknown]
            if foreign:
                results.append(AsyncHubResult(self, foreign))
        if mine or results:
            self._hurry()
        total = len(mine) + sum(len(ar._ids) for ar in results)

        def done() -> int:
            with self._lock:
                left = sum(1 for m in mine if m in self._outstanding)
            return len(mine) - left + sum(ar.progress for ar in results)

        def ready(seconds: float | None) -> bool:
            end = None if seconds is None else time.monotonic() + seconds
            with self._finished:
                if not self._finished.wait_for(lambda: self._outstanding.isdisjoint(mine),
                                               _left(end)):
                    return False
            return all(ar.wait(_left(end), progress=False) for ar in results)

        return _progress.wait(done, total, ready, _left(deadline), progress, "wait")

    def result_status(self, msg_ids: Any, status_only: bool = True) -> dict[str, Any]:
        """``{'pending': [msg_ids], 'completed': [msg_ids]}`` (and the results of the
        completed ones by msg_id, unless ``status_only``)."""
        ids = self._taskids(msg_ids)
        status = self._conn.result_status(ids)
        out: dict[str, Any] = {key: [self._msg_id(t) for t in status[key]]
                               for key in ("pending", "completed")}
        if status.get("unknown"):
            raise self._unknown(status["unknown"])
        if not status_only and status["completed"]:
            ar = AsyncHubResult(self, status["completed"])
            values = ar.get(return_exceptions=True)
            out.update(zip(out["completed"], values, strict=True))
        return out

    def abort(self, jobs: Any = None, targets: Any = None, block: bool | None = None) -> None:
        """Keep tasks (msg_ids, AsyncResults; this client's outstanding ones by
        default) that have not run from running: they fail with TaskAborted."""
        ids = self._taskids(jobs)
        if ids:
            self._conn.abort(ids)

    def resubmit(self, indices_or_msg_ids: Any = None, metadata: Any = None,
                 block: bool | None = None) -> AsyncResult:
        """Run finished tasks again (their results come under new msg_ids)."""
        ids = self._taskids(-1 if indices_or_msg_ids is None else indices_or_msg_ids)
        new = self._conn.resubmit(ids)
        ar = AsyncHubResult(self, new, "resubmit", fetch=False)
        for taskid in new:
            _reactor.call(self._async.listen, taskid, ar._arrived)
        with self._lock:
            self.history.extend(ar.msg_ids)
        if block if block is not None else self.block:
            ar.wait()
        return ar

    def purge_results(self, jobs: Any = (), targets: Any = ()) -> None:
        """Forget ``jobs`` (msg_ids, AsyncResults, or 'all') in the hub and here, as
        ipyparallel does; ValueError for tasks not finished (nothing is purged)."""
        self.purge_hub_results(jobs, targets)
        self.purge_local_results(jobs, targets)

    def purge_hub_results(self, jobs: Any = (), targets: Any = ()) -> None:
        """Forget the hub's records of ``jobs`` (msg_ids, AsyncResults, or 'all')."""
        if isinstance(jobs, str) and jobs == "all":
            self._conn.purge(None)
            return
        ids = self._taskids(jobs) if jobs else []
        if ids:
            self._conn.purge(ids)

    def purge_local_results(self, jobs: Any = (), targets: Any = ()) -> None:
        """Forget what this client kept of ``jobs`` ('all': everything finished)."""
        with self._lock:
            if isinstance(jobs, str) and jobs == "all":
                done = [m for m in self.results if m not in self._outstanding]
            else:
                done = [self._msg_id(t) for t in self._taskids(jobs)] if jobs else []
            for msg in done:
                self.results.pop(msg, None)
                self.metadata.pop(msg, None)

    def purge_everything(self) -> None:
        """Forget every finished record, here and in the hub."""
        self.purge_local_results("all")
        self.purge_results("all")

    def hub_history(self) -> list[str]:
        """The msg_ids of every task the hub knows, in submission order."""
        return [self._msg_id(t) for t in self._conn.history()]

    def db_query(self, query: dict, keys: Iterable[str] | None = None) -> list[dict]:
        """The hub's records matching a Mongo-style ``query`` (``$lt``, ``$gt``,
        ``$in``, ``$nin``, ``$ne``, ...), with ``keys`` (all when None; ``msg_id``
        always); times are datetimes."""
        if not isinstance(query, dict):
            raise TypeError(f"a query is a dict, not a {type(query).__name__}")
        translated = {}
        for key, condition in query.items():
            if key == "msg_id":
                key, condition = "id", _ids_condition(self, condition)
            translated[key] = _stamp(condition)
        wanted = None if keys is None else [k for k in keys if k != "msg_id"]
        columns, rows = self._conn.query_rows(translated,
                                              None if wanted is None else ["id", *wanted])
        # msg_id first, made from the id (always there, as in ipyparallel); the
        # stored msg_id column (asked for with every key) is the same text.
        # Column by column: a long history is a list of a few long columns.
        with collector_paused():  # (many new dicts, no cycle among them)
            by_column: list[Any] = list(zip(*rows, strict=True)) or [()] * len(columns)
            names = ["msg_id"]
            values: list[Any] = [msg_ids(self._prefix, list(by_column[columns.index("id")]))]
            stamp = datetime.datetime.fromtimestamp
            for name, column in zip(columns, by_column, strict=True):
                if name in ("id", "msg_id"):
                    continue
                names.append(name)
                values.append([stamp(v) if v else v for v in column] if name in _TIMES
                              else column)
            return list(map(_record_maker(tuple(names)), *values))

    def queue_status(self, targets: Any = "all", verbose: bool = False) -> dict:
        """Per engine: ``{'queue': n, 'tasks': n, 'completed': n}``, and
        ``'unassigned'``: tasks waiting for an engine."""
        status = self._conn.queue_status(verbose)
        if targets is None or targets == "all":
            return status
        wanted = self._engine_ids(targets)
        if isinstance(targets, int):
            return status[targets]
        return {k: v for k, v in status.items() if k in wanted or k == "unassigned"}

    # -- the end ------------------------------------------------------------------------------
    def shutdown(self, targets: Any = "all", restart: bool = False, hub: bool = False,
                 block: bool | None = None) -> None:
        """Stop the engines of ``targets`` and, with ``hub``, the controller."""
        if restart:
            raise NotImplementedError("restarting engines is not offered by this controller")
        engines = None if targets in (None, "all") else self._engine_ids(targets)
        self._conn.shutdown(engines, hub)

    def setup(self, lines: str) -> list[int]:
        """Declare setup code: run the Python source ``lines`` on every engine now,
        and on every engine that joins from now on before anything else it runs
        (one restarted after it died, with ``Cluster(restart_engines=True)``, or
        one added): imports and constants survive a restart so.  The ids it ran
        on now; an error when it fails on some."""
        if not isinstance(lines, str):
            raise TypeError(f"setup wants a str of Python code, not {type(lines).__name__}")
        return list(self._conn.setup(lines))

    def send_signal(self, sig: int, targets: Any = None, block: bool | None = None) -> None:
        """Send the signal ``sig`` to the engines of ``targets`` (all by default),
        now, not behind their queued work.  ``signal.SIGINT`` interrupts the user
        code each engine runs: that task fails with KeyboardInterrupt, and the
        engine stays, with its namespace.  ValueError for a number that is not
        a signal."""
        engines = None if targets in (None, "all") else self._engine_ids(targets)
        self._conn.send_signal(int(sig), engines)

    def close(self, linger: Any = None) -> None:
        """Close the connection (the hub keeps the records); closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._conn.close()

    def spin(self) -> None:
        """Nothing to do: results arrive by themselves."""

    def activate(self, targets: Any = "all", suffix: str = "") -> DirectView:
        """Make a DirectView of ``targets`` the one of the ``%px`` magics."""
        view = self.direct_view(targets)
        view.block = True  # the magics wait for their results, as in ipyparallel
        view.activate(suffix)
        return view

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<plait.parallel.Client {self._async._source}>"


def _ids_condition(client: Client, condition: Any) -> Any:
    """A query condition on msg_ids, as one on task ids."""
    if isinstance(condition, dict):
        return {op: _ids_condition(client, value) for op, value in condition.items()}
    if isinstance(condition, (list, tuple, set)):
        return [client._taskid(m) for m in condition]
    return client._taskid(condition)


