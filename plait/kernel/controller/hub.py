"""The hub: the record of every task, for every client.

The task controller tells the hub of each task it accepts
(:meth:`Hub.submitted`) and of each that finishes (:meth:`Hub.finished`).
Unfinished tasks are kept here, in memory (they are in the controller's
memory anyway); finished ones go to the store (:mod:`.hubstore`: SQLite by
default, so they survive the controller and do not fill its memory).  Any
client may then ask for any record by id, wait for one, query them, or
purge them.

Records are dicts of the store's columns (``id``, ``msg_id``,
``client_uuid``, ``submitted``, ``started``, ``completed``, ``engine_id``,
``status``, ``stdout``...).  ``status`` is None while a task is
unfinished, then ``succeeded``, ``failed`` or ``aborted``; ``payload`` the
serialized value or failure (opaque), ``request`` the task as submitted
(kept so that it can be resubmitted).

A task's engine parts too large to travel inline (over 1 MB pickled) are
in the blob server, uploaded before the task was submitted.  With the SQLite
store, the hub has the blob server keep them on disk as well: a task
acknowledged as durable (:meth:`Hub.durable`) then runs after a controller
restart with its arguments.  They are dropped once the task is finished.
A direct view's requests (pinned to their engine, as ``push``) are not
kept so: like the kernel's MultiEngine commands, their data lives in
memory only, and writing it would slow every large push.

Message ids: a task's ``msg_id`` is a UUID whose first 64 bits name this
controller (its *prefix*, kept in the profile so that it survives
restarts) and whose last 64 are the task id, so ids of different
controllers never collide and the hub finds a task from its ``msg_id``
without an index.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any, NamedTuple

from twisted.internet import defer
from twisted.internet import reactor as _twisted_reactor
from zope.interface import implementer

from plait.interfaces.parallel import IHub
from plait.kernel.controller.hubstore import QueryError, check_query, matches
from plait.wire.records import TaskResultRecord, msg_id_maker, taskid_of
from plait.wire.serialize import is_bulk
from plait.wire.task import with_engine_parts

reactor: Any = _twisted_reactor  # provides every IReactor* interface; typed by Twisted as a bare protocol

#: Seconds before the kept arguments of a finished task are dropped again, when
#: its record could not be written (a restarted controller would run it again).
RETRY_DROP = 60.0


def _engine_parts(spec: Any) -> list[bytes]:
    """The engine parts of a task and its recovery chain (a ControllerTask's)."""
    parts = []
    while spec is not None:
        parts.append(spec.payload)
        spec = spec.recovery
    return parts


class _Pending(NamedTuple):
    """A task not finished, as the hub holds it until it has its record."""

    task: Any
    after: Any  # its graph dependencies, or None
    follow: Any
    request: bytes | None  # unless the store keeps it (queue)


#: The fields a pending task's record has (the others are None until it finishes).
_PENDING_FIELDS = frozenset({"id", "msg_id", "client_uuid", "kind", "submitted", "status",
                             "after", "follow", "request"})


class _View:
    """A pending task's record as :func:`matches` reads it (``get``), made of the
    entry of ``Hub._pending`` it is set to, field by field."""

    __slots__ = ("entry", "_msg_id")

    def __init__(self, msg_id: Any):
        self.entry: Any = None
        self._msg_id = msg_id

    def get(self, key: str) -> Any:
        entry = self.entry
        if isinstance(entry, dict):
            return entry.get(key)
        task = entry.task if isinstance(entry, _Pending) else entry
        if key == "id":
            return task.taskid
        if key == "msg_id":
            return self._msg_id(task.taskid)
        if key == "client_uuid":
            return getattr(task.owner, "uuid", None)
        if key == "kind":
            return "later" if task.later else "task"
        if key == "submitted":
            return task.submitted
        if isinstance(entry, _Pending) and key in ("after", "follow", "request"):
            value = getattr(entry, key)
            return value if key == "request" or value is None else list(value.ids)
        return None


def _submitted(entry: Any) -> float | None:
    """When the task of an entry of ``Hub._pending`` was submitted."""
    if isinstance(entry, dict):
        return entry["submitted"]
    return (entry.task if isinstance(entry, _Pending) else entry).submitted


@implementer(IHub)
class Hub:
    """Records of every task, in ``store``; ``prefix`` names this controller."""

    def __init__(self, store: Any, prefix: int, blobs: Any = None):
        self.store = store
        self.prefix = prefix
        self._msg_id = msg_id_maker(prefix)
        # The blob server: the large results of later-generation tasks are kept
        # there (on disk) for as long as their records, when the store keeps any.
        self.blobs = blobs if store.name != "none" else None
        # the large arguments of queued tasks are kept with them (on disk) too
        self._keep_args = self.blobs is not None and store.name == "sqlite"
        self._writing: list[defer.Deferred] = []  # those writes still running
        self._kept_args: set[bytes] = set()  # (their descriptors) kept for queued tasks
        self._args_of: dict[int, list[bytes]] = {}  # task id -> its chain's engine parts
        # The tasks not finished: the task itself (its record is made when asked
        # for: a queued task costs no dict here), with its graph dependencies and
        # request when it has any, or a restored task's record.
        self._pending: dict[int, Any] = {}
        self._waiters: dict[int, list[defer.Deferred]] = {}

    @property
    def first_free_id(self) -> int:
        return int(self.store.first_free_id)

    # -- what the task controller tells ----------------------------------------------------
    def restored(self, rows: list[dict]) -> None:
        """The records of tasks a controller that died had accepted: pending
        again (their clients may wait for them) until they are taken back.
        Their large arguments (kept on disk) are readdressed, in ``rows`` too,
        to the blob server's address now (the data port may have changed)."""
        for row in rows:
            if self.blobs is not None and row.get("request"):
                parts: list[bytes] = []

                def readdressed(payload: bytes, parts: list[bytes] = parts) -> bytes:
                    assert self.blobs is not None
                    payload = self.blobs.readdress(payload)
                    parts.append(payload)
                    if self._keep_args and is_bulk(payload):
                        self._kept_args.add(payload)
                    return payload

                row["request"] = with_engine_parts(row["request"], readdressed)
                if any(p in self._kept_args for p in parts):
                    self._args_of[row["id"]] = parts
            self._pending[row["id"]] = dict(row)

    def submitted(self, task: Any, data: bytes | None) -> None:
        old = self._pending.get(task.taskid)
        if old is not None:  # taken back after a restart: the record it had (queued still)
            return
        spec = task.spec
        after = None if spec is None else spec.after
        follow = None if spec is None else spec.follow
        request = None if self.store.keeps_requests else data
        entry = task if after is None and follow is None and request is None \
            else _Pending(task, after, follow, request)
        self._pending[task.taskid] = entry
        if data is not None:  # (a recovery task has none: its original task is queued)
            row = self._row(entry)
            row["request"] = data
            self.store.queue(row)
            if self._keep_args and spec is not None and not spec.pinned and (
                    spec.recovery is not None or is_bulk(spec.payload)):
                # (most tasks have no large part: nothing is kept for them)
                parts = _engine_parts(spec)
                large = [p for p in parts if is_bulk(p)]
                for payload in large:
                    self._keep(payload)
                if large:
                    self._args_of[task.taskid] = parts
        elif spec is not None and spec.payload in self._kept_args:  # a recovery task's
            self._args_of[task.taskid] = [spec.payload]

    def _keep(self, payload: bytes) -> None:
        """Have the blob server keep ``payload``'s blob on disk; :meth:`durable`
        waits for the write."""
        d: defer.Deferred = defer.Deferred()
        self._writing.append(d)

        def done(_: Any) -> None:
            self._writing.remove(d)

        d.addCallback(done)
        self._kept_args.add(payload)
        assert self.blobs is not None
        self.blobs.keep(payload, lambda: reactor.callFromThread(d.callback, None))

    def durable(self) -> defer.Deferred:
        if not self._writing:
            return self.store.durable()
        return defer.gatherResults([self.store.durable(), *self._writing]).addCallback(
            lambda problems: problems[0])

    def finished(self, record: TaskResultRecord, task: Any) -> None:
        entry = self._pending.pop(record.taskid, None)
        row = {"id": record.taskid, "msg_id": self._msg_id(record.taskid)} if entry is None \
            else self._row(entry)
        row.update(
            started=record.started, completed=record.completed, engine_id=record.engineid,
            engine_uuid=record.engine_uuid, status=record.status, attempts=record.attempts,
            stdout=record.stdout, stderr=record.stderr, pyout=record.pyout,
            execution_count=record.execution_count,
            engine_started=record.engine_started, engine_completed=record.engine_completed,
            payload=record.payload,
        )
        if self.blobs is not None and row.get("kind") == "later" and is_bulk(record.payload):
            self.blobs.keep(record.payload)
        parts = self._args_of.pop(record.taskid, None)
        self.store.add(row)
        if parts and self.blobs is not None:
            # Its large arguments are no longer needed (a task finishes after its
            # recovery tasks: none of its chain is), once its record is committed
            # (killed before, the controller would take it back, and run it again).
            blobs = self.blobs
            kept = [p for p in parts if p in self._kept_args]
            self._kept_args.difference_update(kept)

            def drop(problem: str | None) -> None:
                if problem is not None:  # its record may not be on disk: ask again later
                    reactor.callLater(RETRY_DROP, lambda: self.store.durable().addCallback(drop))
                    return
                for payload in kept:
                    blobs.drop_payload(payload)

            self.store.durable().addCallback(drop)
        for d in self._waiters.pop(record.taskid, ()):
            d.callback(None)

    # -- IHub ------------------------------------------------------------------------------
    def msg_id(self, taskid: int) -> str:
        return self._msg_id(taskid)

    def taskid(self, text: Any) -> int | None:
        return taskid_of(self.prefix, text)

    def records(self, taskids: list[int], block: bool = False,
                with_requests: bool = True) -> defer.Deferred:
        if block:
            waits = []
            for taskid in taskids:
                if taskid in self._pending:
                    d: defer.Deferred = defer.Deferred()
                    self._waiters.setdefault(taskid, []).append(d)
                    waits.append(d)
            if waits:
                return defer.gatherResults(waits).addCallback(
                    lambda _: self.records(taskids, with_requests=with_requests))
        # (as they stand now: one that finishes while the store reads is pending still)
        pending = {t: self._row(self._pending[t]) for t in taskids if t in self._pending}
        finished = [t for t in taskids if t not in pending]
        d = self.store.get(finished)  # (even of none: its answer means all is kept)

        if with_requests:
            d = self._with_requests(d, [(row, row) for row in pending.values()])

        def merge(found: list[dict | None]) -> list[dict | None]:
            by_id = dict(zip(finished, found, strict=True))
            rows = [pending[t] if t in pending else by_id.get(t) for t in taskids]
            if self.blobs is not None:  # kept large results, where they are served now
                for row in rows:
                    if row is not None and row.get("payload"):
                        row["payload"] = self.blobs.readdress(row["payload"])
            return rows

        return d.addCallback(merge)

    def status(self, taskids: list[int]) -> defer.Deferred:
        def sort(found: list[dict | None]) -> dict[str, list[int]]:
            out: dict[str, list[int]] = {"pending": [], "completed": [], "unknown": []}
            for taskid, record in zip(taskids, found, strict=True):
                key = ("unknown" if record is None
                       else "pending" if record["status"] is None else "completed")
                out[key].append(taskid)
            return out

        return self.records(taskids, with_requests=False).addCallback(sort)

    def history(self) -> defer.Deferred:
        """A Deferred firing with every task id, in submission order."""

        def merge(stored: list[tuple[float, int]]) -> list[int]:
            pending = sorted((_submitted(r) or 0.0, t) for t, r in self._pending.items())
            return [t for _, t in heapq.merge(stored, pending)]

        return self.store.submissions().addCallback(merge)

    def query(self, query: dict, keys: list[str] | None = None) -> defer.Deferred:
        try:
            columns = check_query(query, keys)
        except QueryError:
            return defer.fail()
        matched = self._matching_pending(query)
        pending = [{k: r.get(k) for k in columns} for r in matched]
        d = self.store.find(query, columns)
        if not pending:  # the store's records come in id order
            return d
        if "request" in columns:
            d = self._with_requests(d, list(zip(pending, matched, strict=True)))
        return d.addCallback(lambda found: sorted(found + pending, key=lambda r: r["id"]))

    def query_rows(self, query: dict, keys: list[str] | None = None) -> defer.Deferred:
        """As :meth:`query`, firing with ``(columns, rows)``: each record a tuple
        of its values in ``columns`` order (``id`` among them), for less to
        build and send than dicts (``db_query`` over a long history)."""
        try:
            columns = check_query(query, keys)
        except QueryError:
            return defer.fail()
        if not self._matching_pending(query):  # (the common case: the store alone)
            return self.store.find_rows(query, columns).addCallback(
                lambda rows: (columns, rows))
        return self.query(query, keys).addCallback(
            lambda found: (columns, [tuple(map(r.get, columns)) for r in found]))

    def _matching_pending(self, query: dict) -> list[dict]:
        """The records of the pending tasks ``query`` matches.  A condition on a
        field no pending record has (``engine_id``, ``completed``...) that a
        missing value fails rules them all out at once; otherwise each is tested
        through a view, its record made only when it matches."""
        beyond = {column: c for column, c in query.items() if column not in _PENDING_FIELDS}
        if beyond and not matches({}, beyond):
            return []
        entries: Any = self._pending.values()
        if "status" in query and not matches({}, {"status": query["status"]}):
            # (a status only the rows a restarted controller took back have: the
            # others, unfinished here, have none)
            entries = [e for e in entries if isinstance(e, dict)]
        view = _View(self._msg_id)
        found = []
        for entry in entries:
            view.entry = entry
            if matches(view, query):  # type: ignore[arg-type]
                found.append(self._row(entry))
        return found

    def _with_requests(self, d: defer.Deferred, rows: list[tuple[dict, dict]]
                       ) -> defer.Deferred:
        """``d``, once the request of each ``(answer, pending row)`` of ``rows`` is in
        its answer: queued tasks' requests are kept by the store, not here."""
        rows = [(answer, row) for answer, row in rows if row.get("request") is None]
        if not rows or not self.store.keeps_requests:
            return d
        # asked now, in the turn the pending rows were taken: the store reads its
        # queue as it stood then (a task finishing later leaves it after this read)
        asked = self.store.queued_requests([r["id"] for _, r in rows])

        def put(requests: dict[int, bytes | None], found: Any) -> Any:
            for answer, row in rows:
                answer["request"] = requests.get(row["id"])
            return found

        def failed(f: Any) -> Any:
            asked.addErrback(lambda _: None)  # (its own failure is this one's news)
            return f

        return d.addCallbacks(lambda found: asked.addCallback(put, found), failed)

    def purge(self, taskids: Iterable[int] | None) -> defer.Deferred:
        if taskids is None:
            self.store.delete(None)
            if self.blobs is not None:  # (not the arguments of queued tasks)
                self.blobs.drop_all_kept(besides=self._kept_args)
            return defer.succeed(None)
        ids = list(taskids)
        busy = [t for t in ids if t in self._pending]
        if busy:
            return defer.fail(ValueError(
                f"cannot purge unfinished tasks: {[self.msg_id(t) for t in busy]}"))
        blobs = self.blobs
        if blobs is None:
            self.store.delete(ids)
            return defer.succeed(None)

        def drop(rows: list[dict | None]) -> None:  # the large results they kept
            for row in rows:
                if row is not None and row.get("payload"):
                    blobs.drop_payload(row["payload"])
            self.store.delete(ids)

        return self.store.get(ids, ["payload"]).addCallback(drop)

    def _row(self, entry: Any) -> dict:
        """A new dict: the record of a pending task (an entry of ``_pending``)."""
        if isinstance(entry, dict):
            return dict(entry)
        task, after, follow, request = entry if isinstance(entry, _Pending) \
            else (entry, None, None, None)
        return {
            "id": task.taskid,
            "msg_id": self._msg_id(task.taskid),
            "client_uuid": getattr(task.owner, "uuid", None),
            "kind": "later" if task.later else "task",
            "submitted": task.submitted,
            "status": None,
            "after": None if after is None else list(after.ids),
            "follow": None if follow is None else list(follow.ids),
            "request": request,
        }

    def compact(self) -> None:
        """Rebuild the index of pending tasks at its present size (after a burst)."""
        self._pending = dict(self._pending)

    def pending(self) -> list[int]:
        """The ids of the tasks not finished yet."""
        return list(self._pending)
