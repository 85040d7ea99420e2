"""Where the hub keeps its records: SQLite (the default), memory, or nowhere.

A record is a dict of the :data:`COLUMNS` below, keyed by the task id.  A
store takes writes from the reactor thread without waiting (``add``,
``update``, ``delete``), and answers reads with Deferreds (``get``,
``find``, ``ids``): a read sees every write made before it.

:class:`SQLiteStore` keeps one connection in a thread of its own: writes
queue up and are applied in batches, each batch one transaction, committed
once no write has come for :data:`COMMIT_AFTER` seconds (the reactor thread
hands the records of each of its turns over together, see
:data:`HAND_OVER_EVERY`; a controller killed loses at most what it was handing
over and the writes of the last few milliseconds); reads run in the same thread,
after the writes before them, which they commit first (a read's answer means
that every write before it is on disk).  The reactor thread never touches the
database.

The tasks accepted and not finished (``queue``) are held in memory for
:data:`QUEUE_HOLD` seconds first: most finish sooner, and are then never
written to the queue at all.  :meth:`SQLiteStore.durable` writes what is
held at once and fires once it is committed: the controller answers a
submission (which the client takes as its acknowledgment) only then, so a
controller killed at any moment loses no acknowledged task.  Memory stays bounded by the SQLite page cache, however many
records accumulate; payloads live in the database file, not in memory.

Queries (:meth:`find`) take ipyparallel's Mongo-style dicts:
``{'completed': {'$gt': t}, 'engine_id': {'$in': [0, 1]}, 'status': 'ok'}``
with ``$lt $lte $gt $gte $eq $ne $in $nin $exists``; a plain value means
equality.  They become SQL for SQLite and run as Python for memory.
"""

from __future__ import annotations

import json
import operator
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _twisted_reactor

from plait.wire.errors import QueryError
from plait.wire.serialize import collector_paused

reactor: Any = _twisted_reactor  # provides every IReactor* interface; typed by Twisted as a bare protocol

#: Columns of a record, and their SQL types (``after``/``follow`` are JSON lists).
COLUMNS: dict[str, str] = {
    "id": "INTEGER PRIMARY KEY",
    "msg_id": "TEXT",
    "client_uuid": "TEXT",
    "kind": "TEXT",
    "submitted": "REAL",
    "started": "REAL",
    "completed": "REAL",
    "engine_started": "REAL",
    "engine_completed": "REAL",
    "engine_id": "INTEGER",
    "engine_uuid": "TEXT",
    "status": "TEXT",
    "attempts": "INTEGER",
    "stdout": "TEXT",
    "stderr": "TEXT",
    "pyout": "TEXT",
    "execution_count": "INTEGER",
    "after": "TEXT",
    "follow": "TEXT",
    "payload": "BLOB",
    "request": "BLOB",
    "resubmitted": "TEXT",
}
_JSON = ("after", "follow")
OPERATORS = {"$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">=", "$eq": "=", "$ne": "!="}

#: Seconds new records wait in the reactor thread before they go to the database
#: thread together.  0: at the end of the reactor's turn, so that the records of
#: one batch of results go together, and a record is committed within a few
#: milliseconds of its result being sent (a controller killed then keeps it).
HAND_OVER_EVERY = 0.0

#: Seconds an accepted task is held before it is written to the queue, unless
#: :meth:`SQLiteStore.durable` is asked for first (see the module documentation).
QUEUE_HOLD = 0.5

#: Seconds the database thread waits for more writes before it commits those it
#: has: tasks run one at a time (a blocking loop) share a commit, which halves
#: the thread's CPU per task (about 130 -> 65 us for ``rc[0].apply_sync``).
COMMIT_AFTER = 0.002


def check_query(query: Any, keys: Any) -> list[str]:
    """The columns ``keys`` names (all of them when None); QueryError for bad input."""
    if not isinstance(query, dict):
        raise QueryError(f"a query is a dict, not a {type(query).__name__}")
    for column, condition in query.items():
        if column not in COLUMNS:
            raise QueryError(f"unknown record key {column!r}; known: {sorted(COLUMNS)}")
        if isinstance(condition, dict):
            for op, operand in condition.items():
                if op not in OPERATORS and op not in ("$in", "$nin", "$exists"):
                    raise QueryError(f"unknown query operator {op!r} for {column!r}")
                if op in ("$in", "$nin") and not isinstance(operand, (list, tuple, set,
                                                                      frozenset)):
                    raise QueryError(f"{op} for {column!r} takes a list of values, not "
                                     f"{operand!r}")
                if op in ("$lt", "$lte", "$gt", "$gte") and (
                        operand is None or isinstance(operand, (dict, list, tuple, set))):
                    raise QueryError(f"{op} for {column!r} compares with a number or a "
                                     f"string, not {operand!r}")
    if keys is None:
        return list(COLUMNS)
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise QueryError("keys is a list of record keys")
    unknown = [k for k in keys if k not in COLUMNS]
    if unknown:
        raise QueryError(f"unknown record keys {unknown}; known: {sorted(COLUMNS)}")
    return list(dict.fromkeys(["id", *keys]))


def matches(record: dict, query: dict) -> bool:
    """Whether ``record`` satisfies ``query`` (the memory store's way)."""
    for column, condition in query.items():
        value = record.get(column)
        if not isinstance(condition, dict):
            condition = {"$eq": condition}
        for op, operand in condition.items():
            if op == "$exists":
                if (value is not None) != bool(operand):
                    return False
                continue
            if op in ("$in", "$nin"):
                if (value in operand) != (op == "$in"):
                    return False
                continue
            if op in ("$eq", "$ne"):
                if (value == operand) != (op == "$eq"):
                    return False
                continue
            if value is None or not _compare(value, op, operand):
                return False
    return True


def _compare(value: Any, op: str, operand: Any) -> bool:
    try:
        return {"$lt": value < operand, "$lte": value <= operand,
                "$gt": value > operand, "$gte": value >= operand}[op]
    except TypeError:
        return False


class MemoryStore:
    """Records in a dict: fast, lost with the controller, bounded only by purging."""

    name = "memory"
    #: The lowest task id no record of this store has (what a new controller starts at).
    first_free_id = 0
    #: Whether the store keeps the request of each queued task itself (``queue``)
    #: and puts it in the task's finished record when ``add`` gets none: the hub
    #: then holds no copy of it while the task waits.
    keeps_requests = False

    def __init__(self) -> None:
        self._records: dict[int, dict] = {}

    def add(self, record: dict) -> None:
        self._records[record["id"]] = dict(record)

    # The queue is kept by the SQLite store alone (it outlives the controller).
    def queue(self, record: dict) -> None:
        """Keep ``record``, of a task accepted and not finished, until its
        finished record is added (a controller started again runs it)."""

    #: (``load_queued``) what :meth:`queue` kept and was not finished when the store
    #: opened, and how the tasks they depend on ended: ``(rows, {taskid: row})``
    left_queued: tuple[list[dict], dict[int, dict]] = ([], {})

    def clear_queued(self) -> None:
        """Forget what :meth:`queue` kept (a controller that does not take it over)."""

    def durable(self) -> defer.Deferred:
        """A Deferred firing once everything added and queued so far would
        survive the controller's death (here: at once, nothing would), with
        None, or with a text saying why some of it is not on disk (a write that
        failed: disk full...); it never fails."""
        return defer.succeed(None)

    def update(self, taskid: int, fields: dict) -> None:
        record = self._records.get(taskid)
        if record is not None:
            record.update(fields)

    def delete(self, taskids: Iterable[int] | None) -> None:
        if taskids is None:
            self._records.clear()
        else:
            for taskid in taskids:
                self._records.pop(taskid, None)

    def get(self, taskids: list[int], keys: list[str] | None = None) -> defer.Deferred:
        out = []
        for taskid in taskids:
            record = self._records.get(taskid)
            out.append(None if record is None else _pick(record, keys))
        return defer.succeed(out)

    def find(self, query: dict, keys: list[str]) -> defer.Deferred:
        """A Deferred firing with the records matching ``query`` (see
        :func:`matches`), as dicts of ``keys``, in id order."""
        return defer.succeed([_pick(r, keys) for r in self._matching(query)])

    def find_rows(self, query: dict, keys: list[str]) -> defer.Deferred:
        """As :meth:`find`, each record a tuple of its ``keys`` values, in that
        order (cheaper to build and send: ``db_query``'s way)."""
        return defer.succeed([tuple(map(r.get, keys)) for r in self._matching(query)])

    def _matching(self, query: dict) -> list[dict]:
        """The records ``query`` matches, in id order (they were added in the
        order their tasks finished)."""
        found = [r for r in self._records.values() if matches(r, query)]
        found.sort(key=operator.itemgetter("id"))
        return found

    def ids(self) -> defer.Deferred:
        """The ids of the records, in submission order."""
        return self.submissions().addCallback(lambda pairs: [t for _, t in pairs])

    def submissions(self) -> defer.Deferred:
        """``[(submitted, id)]`` of every record, in submission order."""
        return defer.succeed(sorted((r.get("submitted") or 0.0, r["id"])
                                    for r in self._records.values()))

    def close(self) -> defer.Deferred:
        return defer.succeed(None)


class NoStore(MemoryStore):
    """Records nothing: ``ipcontroller --db none`` (results reach their clients only)."""

    name = "none"

    def add(self, record: dict) -> None:
        pass


def _pick(record: dict, keys: list[str] | None) -> dict:
    if keys is None:
        return dict(record)
    return {k: record.get(k) for k in keys}


class SQLiteStore:
    """Records in an SQLite database file, written behind by a thread of its own."""

    name = "sqlite"

    def __init__(self, path: Path | str, load_queued: bool = False):
        self.path = str(path)
        self.first_free_id = 0
        self._load_queued = load_queued
        self.left_queued: tuple[list[dict], dict[int, dict]] = ([], {})
        self._new: list[dict] = []  # records added, not yet handed to the database thread
        self._new_queued: list[dict] = []  # the same, of tasks accepted (see queue())
        self._held: dict[int, dict] = {}  # tasks accepted, held before queueing (QUEUE_HOLD)
        self._hold_call: Any = None
        self._hand_over_call: Any = None
        self._closing: defer.Deferred | None = None
        self._ops: queue.SimpleQueue = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="plait-hub-db", daemon=True)
        self._write_failed: tuple[float, str] | None = None  # (the database thread's)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    # -- the reactor thread ---------------------------------------------------------
    # New records are handed to the database thread in batches, every
    # HAND_OVER_EVERY seconds; any other operation hands over what waits first,
    # so operations keep their order and reads see every record added before.
    keeps_requests = True
    #: How long a failed write is told to every submission acknowledged after it.
    FAILURES_TOLD_FOR = 60.0

    def add(self, record: dict) -> None:
        held = self._held.pop(record["id"], None)  # (finished while held: never queued)
        if held is not None and record.get("request") is None:
            record["request"] = held.get("request")
        self._keep(self._new, record)  # (or the database thread takes it from the queue)

    def queue(self, record: dict) -> None:
        if not self._open():
            return
        self._held[record["id"]] = record
        if self._hold_call is None:
            self._hold_call = reactor.callLater(QUEUE_HOLD, self._release_held)

    def _release_held(self) -> None:
        """Queue what is held (still unfinished) now."""
        if self._hold_call is not None:
            if self._hold_call.active():
                self._hold_call.cancel()
            self._hold_call = None
        if self._held:
            held, self._held = self._held, {}
            self._new_queued.extend(held.values())
            self._hand_over()

    def durable(self) -> defer.Deferred:
        """Write what is held and waits, then fire once committed (see the module
        documentation) with None, or with the last write or commit that failed
        in the last :attr:`FAILURES_TOLD_FOR` seconds (what was accepted may
        then not be on disk).  Never fails; a closed store fires at once."""
        if self._closing is not None:
            return defer.succeed(None)
        self._release_held()
        return self._read(self._failed_writes).addErrback(
            lambda f: f"the hub's database could not commit: {f.value}")

    def _failed_writes(self, db: sqlite3.Connection) -> str | None:
        """(The database thread) the last write that failed, in the last
        :attr:`FAILURES_TOLD_FOR` seconds, or None: every submission acknowledged
        meanwhile is told (a full disk fails one write after another)."""
        if self._write_failed is None:
            return None
        when, what = self._write_failed
        return what if time.monotonic() - when < self.FAILURES_TOLD_FOR else None

    def _keep(self, waiting: list[dict], record: dict) -> None:
        """Put ``record`` in ``waiting`` until the next hand-over (scheduled now)."""
        if not self._open():
            return
        waiting.append(record)
        if self._hand_over_call is None:
            from twisted.internet import reactor

            self._hand_over_call = reactor.callLater(HAND_OVER_EVERY, self._hand_over)

    def clear_queued(self) -> None:
        if self._open():
            self._held.clear()
            self._put("clear_queued", None)

    def _hand_over(self) -> None:
        if self._hand_over_call is not None:
            if self._hand_over_call.active():
                self._hand_over_call.cancel()
            self._hand_over_call = None
        if self._new_queued:
            queued, self._new_queued = self._new_queued, []
            done = {record["id"] for record in self._new}  # (finished in the same turn)
            queued = [record for record in queued if record["id"] not in done]
            if queued:
                self._ops.put(("queue", queued))
        if self._new:
            new, self._new = self._new, []
            self._ops.put(("add", new))

    def _put(self, op: str, arg: Any) -> None:
        self._hand_over()
        self._ops.put((op, arg))

    def _open(self) -> bool:
        if self._closing is not None:
            _log_error(RuntimeError("the hub store is closed: a write was dropped"))
            return False
        return True

    def update(self, taskid: int, fields: dict) -> None:
        if self._open():
            self._put("update", (taskid, _encode(fields)))

    def delete(self, taskids: Iterable[int] | None) -> None:
        if self._open():
            self._put("delete", None if taskids is None else list(taskids))

    def get(self, taskids: list[int], keys: list[str] | None = None) -> defer.Deferred:
        return self._read(self._get, list(taskids), keys or list(COLUMNS))

    def find(self, query: dict, keys: list[str]) -> defer.Deferred:
        return self._read(self._find, query, keys)

    def find_rows(self, query: dict, keys: list[str]) -> defer.Deferred:
        return self._read(self._find_rows, query, keys)

    def queued_requests(self, taskids: list[int]) -> defer.Deferred:
        """A Deferred firing with ``{taskid: request}`` of those queued tasks
        (the requests this store keeps for the hub, see :attr:`keeps_requests`)."""
        held = {t: self._held[t].get("request") for t in taskids if t in self._held}
        rest = [t for t in taskids if t not in held]
        if not rest:
            return defer.succeed(held)

        def read(db: sqlite3.Connection) -> dict[int, bytes | None]:
            found = dict(held)
            for start in range(0, len(rest), 500):
                chunk = rest[start:start + 500]
                found.update(db.execute(f"SELECT id, request FROM queued WHERE id IN "
                                        f"({', '.join('?' * len(chunk))})", chunk))
            return found

        return self._read(read)

    def ids(self) -> defer.Deferred:
        return self.submissions().addCallback(lambda pairs: [t for _, t in pairs])

    def submissions(self) -> defer.Deferred:
        """``[(submitted, id)]`` of every record, in submission order."""
        return self._read(lambda db: [(row[0] or 0.0, row[1]) for row in db.execute(
            "SELECT submitted, id FROM records ORDER BY submitted, id")])

    def close(self) -> defer.Deferred:
        """Write what waits and close the database; a Deferred firing with None
        (closing again fires once the first close is done)."""
        if self._closing is None:
            self._release_held()
            self._closing = defer.Deferred()
            self._put("close", self._closing)
        d: defer.Deferred = defer.Deferred()

        def closed(result: Any) -> Any:
            d.callback(None)
            return result

        self._closing.addBoth(closed)
        return d

    def _read(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._closing is not None:
            return defer.fail(RuntimeError("the hub store is closed"))
        d: defer.Deferred = defer.Deferred()
        self._put("read", (fn, args, d))
        return d

    # -- the database thread ----------------------------------------------------------
    def _run(self) -> None:
        try:
            _private(self.path)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
            db.execute(f"CREATE TABLE IF NOT EXISTS records ({columns})")
            # the records of tasks accepted and not finished: a controller started
            # again after it died (--restore) runs them
            db.execute(f"CREATE TABLE IF NOT EXISTS queued ({columns})")
            for name, kind in COLUMNS.items():  # a database of an older plait
                try:
                    db.execute(f"ALTER TABLE records ADD COLUMN {name} {kind.split()[0]}")
                except sqlite3.OperationalError:
                    pass
            for index in ("submitted", "completed", "engine_id", "client_uuid", "status"):
                db.execute(f"CREATE INDEX IF NOT EXISTS records_{index} ON records ({index})")
            # ids go on from the last run's: the records of the tasks of an
            # earlier controller keep their msg_ids
            self.first_free_id = db.execute(
                "SELECT coalesce(max(id) + 1, 0) FROM records").fetchone()[0]
            if self._load_queued:  # before any client can ask: read now
                left = self._get_queued(db)
                needed = sorted({i for row in left for key in _JSON for i in (row.get(key) or ())}
                                - {row["id"] for row in left})
                outcomes = self._get(db, needed, ["id", "status", "engine_id"])
                self.left_queued = (left, {r["id"]: r for r in outcomes if r is not None})
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        insert_queued = (f"INSERT OR REPLACE INTO queued ({', '.join(COLUMNS)}) "
                         f"VALUES ({', '.join('?' * len(COLUMNS))})")
        # a finished record given without its request takes the one its queue row has
        slots = ["coalesce(?, (SELECT request FROM queued WHERE id = ?))" if name == "request"
                 else "?" for name in COLUMNS]
        insert = (f"INSERT OR REPLACE INTO records ({', '.join(COLUMNS)}) "
                  f"VALUES ({', '.join(slots)})")
        in_transaction = False
        began = 0.0
        while True:
            try:  # an open transaction is committed once no write came for COMMIT_AFTER s
                ops = [self._ops.get(timeout=COMMIT_AFTER if in_transaction else None)]
            except queue.Empty:
                ops = [("commit", None)]
            while len(ops) < 10_000:  # take what queued up meanwhile: one transaction
                try:
                    ops.append(self._ops.get_nowait())
                except queue.Empty:
                    break
            answered: set[int] = set()
            try:
                rows: list[list] = []
                for op, arg in ops:
                    if op == "add":
                        rows.extend(_record_row(record) for record in arg)
                        continue
                    if op == "queue" or op == "clear_queued":
                        if not in_transaction:
                            db.execute("BEGIN")
                            in_transaction, began = True, time.monotonic()
                        if rows:
                            self._write(db, insert, rows, None, None)
                            rows = []
                        self._write_queued(db, insert_queued, op, arg)
                        continue
                    if rows or op in ("update", "delete"):
                        if not in_transaction:
                            db.execute("BEGIN")
                            in_transaction, began = True, time.monotonic()
                        self._write(db, insert, rows, op, arg)
                        rows = []
                    if op == "read" or op == "commit":
                        if in_transaction:  # an answer means every write before it is kept
                            db.execute("COMMIT")
                            in_transaction = False
                        if op == "read":
                            answered.add(id(arg))
                            self._answer(db, *arg)
                    elif op == "close":
                        if in_transaction:
                            db.execute("COMMIT")
                        db.close()
                        reactor.callFromThread(arg.callback, None)
                        return
                if rows:
                    if not in_transaction:
                        db.execute("BEGIN")
                        in_transaction, began = True, time.monotonic()
                    self._write(db, insert, rows, None, None)
                # (SIGKILL-safe once committed; under a steady flow, once a second at least)
                if in_transaction and time.monotonic() - began > 1.0:
                    db.execute("COMMIT")
                    in_transaction = False
            except sqlite3.Error as exc:  # (BEGIN or COMMIT failed: disk full, locked...)
                self._failed(exc, "a transaction")
                for op, arg in ops:  # no read waits for ever
                    if op == "read" and id(arg) not in answered:
                        reactor.callFromThread(arg[2].errback, exc)
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                in_transaction = False

    def _write_queued(self, db: sqlite3.Connection, insert: str, op: str, arg: Any) -> None:
        try:
            if op == "queue":
                db.executemany(insert, [_row(record) for record in arg])
            else:
                db.execute("DELETE FROM queued")
        except sqlite3.Error as exc:
            self._failed(exc, f"{len(arg) if op == 'queue' else 'the'} queued task(s)")

    def _failed(self, exc: sqlite3.Error, what: str) -> None:
        """(The database thread) a write failed: logged, and told by :meth:`durable`."""
        _log_error(exc)
        self._write_failed = (time.monotonic(), f"the hub's database could not write "
                                                f"{what}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _get_queued(db: sqlite3.Connection) -> list[dict]:
        names = list(COLUMNS)
        return [_decode(dict(zip(names, row, strict=True)))
                for row in db.execute(f"SELECT {', '.join(names)} FROM queued ORDER BY id")]

    def _write(self, db: sqlite3.Connection, insert: str, rows: list[list], op: str | None,
               arg: Any) -> None:
        """Insert ``rows`` (finished: no longer queued), then apply an update or
        delete (a bad write is logged)."""
        try:
            if rows:
                try:
                    db.executemany(insert, rows)
                except sqlite3.Error:  # one bad row must not lose the others
                    for row in rows:
                        try:
                            db.execute(insert, row)
                        except sqlite3.Error as exc:
                            self._failed(exc, f"the record of task {row[0]}")
                db.executemany("DELETE FROM queued WHERE id = ?", [(row[0],) for row in rows])
            if op == "update":
                taskid, fields = arg
                if fields:
                    assignments = ", ".join(f"{name} = ?" for name in fields)
                    db.execute(f"UPDATE records SET {assignments} WHERE id = ?",
                               [*fields.values(), taskid])
            elif op == "delete":
                if arg is None:
                    db.execute("DELETE FROM records")
                else:
                    db.executemany("DELETE FROM records WHERE id = ?", [(i,) for i in arg])
        except sqlite3.Error as exc:  # a bad write must not stop the store
            self._failed(exc, f"{len(rows)} record(s)" if rows else f"an {op}")

    @staticmethod
    def _answer(db: sqlite3.Connection, fn: Callable[..., Any], args: tuple,
                d: defer.Deferred) -> None:
        try:
            result = fn(db, *args)
        except Exception as exc:
            reactor.callFromThread(d.errback, exc)
        else:
            reactor.callFromThread(d.callback, result)

    @staticmethod
    def _get(db: sqlite3.Connection, taskids: list[int], keys: list[str]) -> list[dict | None]:
        found: dict[int, dict] = {}
        names = list(dict.fromkeys(["id", *keys]))
        for start in range(0, len(taskids), 500):
            chunk = taskids[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            for row in db.execute(f"SELECT {', '.join(names)} FROM records "
                                  f"WHERE id IN ({marks})", chunk):
                record = _decode(dict(zip(names, row, strict=True)))
                found[record["id"]] = {k: record[k] for k in keys}
        return [found.get(taskid) for taskid in taskids]

    @staticmethod
    def _find(db: sqlite3.Connection, query: dict, keys: list[str]) -> list[dict]:
        return [dict(zip(keys, row, strict=True))
                for row in SQLiteStore._find_rows(db, query, keys)]

    @staticmethod
    def _find_rows(db: sqlite3.Connection, query: dict, keys: list[str]) -> list[tuple]:
        where, values = _where(query)
        sql = f"SELECT {', '.join(keys)} FROM records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        with collector_paused():  # (many new tuples: no cycles)
            rows = db.execute(sql, values).fetchall()
        at = [k for k, name in enumerate(keys) if name in _JSON]
        if not at:
            return rows
        decoded = []
        for row in rows:
            values = list(row)
            for k in at:
                if isinstance(values[k], str):
                    values[k] = json.loads(values[k])
            decoded.append(tuple(values))
        return decoded


def _where(query: dict) -> tuple[list[str], list[Any]]:
    """SQL conditions meaning what :func:`matches` means (null: a missing value,
    as in Mongo: ``$ne`` and ``$nin`` match it, ``$in`` does when it lists None)."""
    clauses: list[str] = []
    values: list[Any] = []
    for column, condition in query.items():
        if not isinstance(condition, dict):
            condition = {"$eq": condition}

        def stored(value: Any, column: str = column) -> Any:
            return json.dumps(value) if column in _JSON and value is not None else value

        for op, operand in condition.items():
            if op == "$exists":
                clauses.append(f"{column} IS {'NOT ' if operand else ''}NULL")
            elif op in ("$in", "$nin"):
                items = [stored(v) for v in operand if v is not None]
                with_null = any(v is None for v in operand)
                listed = f"{column} IN ({', '.join('?' * len(items))})" if items else "0"
                values.extend(items)
                if op == "$in":
                    clauses.append(f"({listed} OR {column} IS NULL)" if with_null else listed)
                else:
                    clauses.append(f"({column} IS NOT NULL AND NOT {listed})" if with_null
                                   else f"({column} IS NULL OR NOT {listed})")
            elif operand is None and op in ("$eq", "$ne"):
                clauses.append(f"{column} IS {'NOT ' if op == '$ne' else ''}NULL")
            elif op == "$ne":
                clauses.append(f"({column} IS NULL OR {column} != ?)")
                values.append(stored(operand))
            else:
                clauses.append(f"{column} {OPERATORS[op]} ?")
                values.append(stored(operand))
    return clauses, values


def _json(value: Any) -> Any:
    """A JSON column's text (None stays NULL; an empty list, the common case,
    without the encoder)."""
    if value is None:
        return None
    if not value and isinstance(value, list):
        return "[]"
    return json.dumps(value)


def _encode(fields: dict) -> dict:
    return {k: (_json(v) if k in _JSON else v) for k, v in fields.items()}


_NAMES = tuple(COLUMNS)
_REQUEST = _NAMES.index("request")
_JSON_AT = tuple(_NAMES.index(name) for name in _JSON)


def _row(record: dict) -> list:
    """The parameters of a row: the record's columns in order (a written row
    per task, twice for a queued one: this is the hub's hot path)."""
    row = list(map(record.get, _NAMES))
    for k in _JSON_AT:
        value = row[k]
        if value is not None:
            row[k] = "[]" if not value and isinstance(value, list) else json.dumps(value)
    return row


def _record_row(record: dict) -> list:
    """The parameters of the records insert: a row, and the id again after the
    request (the queue row its request is taken from when it has none)."""
    row = _row(record)
    row.insert(_REQUEST + 1, row[0])
    return row


def _decode(record: dict) -> dict:
    for name in _JSON:
        if isinstance(record.get(name), str):
            record[name] = json.loads(record[name])
    return record


def _private(path: str) -> None:
    """Make the database file ``path`` (created if missing) readable by its owner
    only, whatever the umask: it holds the users' code, arguments and results.
    SQLite gives its journal files (``-wal``, ``-shm``) the database's mode; those
    an older controller left are made private too."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        for name in (path + "-wal", path + "-shm"):
            try:
                os.chmod(name, 0o600)
            except FileNotFoundError:
                pass
    except OSError as exc:  # (as SQLite would fail: the store's callers expect its error)
        raise sqlite3.OperationalError(f"cannot open the hub database {path}: "
                                       f"{exc.strerror or exc}") from None


def _log_error(exc: BaseException) -> None:
    from twisted.logger import Logger

    Logger().error("hub database write failed: {error}", error=exc)


def open_store(kind: str, path: Path | None, load_queued: bool = False) -> Any:
    """The store ``ipcontroller --db KIND`` asks for: 'sqlite' (in ``path``),
    'memory' or 'none'; ValueError for anything else.  ``load_queued``: read
    what the last run left queued (:attr:`SQLiteStore.left_queued`)."""
    if kind == "sqlite":
        if path is None:
            raise ValueError("the sqlite hub store needs a path")
        return SQLiteStore(path, load_queued)
    if kind == "memory":
        return MemoryStore()
    if kind == "none":
        return NoStore()
    raise ValueError(f"unknown hub store {kind!r}: sqlite, memory or none")
