"""The hub and its stores, as pure logic: no network, no processes.

The memory stores answer at once.  The SQLite store writes behind in a
thread of its own and fires its Deferreds in the reactor thread, so its
operations run there, through ``in_reactor`` (as the blocking clients run
theirs); a Twisted ``Clock`` stands in for the reactor where the hand-over
timer is the point.
"""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from plait.interfaces.parallel import IHub
from plait.kernel.controller.hub import Hub
from plait.kernel.controller.hubstore import (
    COLUMNS,
    HAND_OVER_EVERY,
    MemoryStore,
    NoStore,
    QueryError,
    SQLiteStore,
    check_query,
    matches,
    open_store,
)
from plait.kernel.controller.registry import EngineRegistry
from plait.kernel.controller.task import TaskController
from plait.kernel.controller.taskstate import Task
from plait.wire.records import TaskResultRecord, msg_id
from plait.wire.serialize import serialize
from plait.wire.task import ControllerTask, GraphDependency, TaskSpec, encode_task
from support import in_reactor
from support.fakes import FakeEngine, fired, pending

PREFIX = 0x1234_5678_9ABC_DEF0


def row(taskid: int, **fields) -> dict:
    """A store record: ``id`` and the fields given (the other columns missing)."""
    return {"id": taskid, **fields}


def ids_of(records) -> list[int]:
    return sorted(r["id"] for r in records)


# -- the stores ------------------------------------------------------------------------------
class Opened:
    """A store under test, closed at teardown if the test did not close it."""

    def __init__(self, store):
        self.store = store

    def close(self):
        if isinstance(self.store, SQLiteStore) and self.store._thread.is_alive():
            in_reactor(self.store.close, timeout=30)


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    opened = Opened(MemoryStore() if request.param == "memory"
                    else SQLiteStore(tmp_path / "hub.sqlite3"))
    yield opened.store
    opened.close()


@pytest.fixture
def sqlite_path(tmp_path):
    return tmp_path / "hub.sqlite3"


@pytest.fixture
def sqlite(sqlite_path):
    opened = Opened(SQLiteStore(sqlite_path))
    yield opened.store
    opened.close()


def add_all(store, records) -> None:
    in_reactor(lambda: [store.add(r) for r in records])


def test_add_get_ids_in_the_order_asked(store):
    add_all(store, [row(2, status="succeeded", engine_id=1), row(0, status="failed"),
                    row(1, status=None)])
    assert sorted(in_reactor(store.ids)) == [0, 1, 2]
    got = in_reactor(store.get, [2, 7, 0], ["status", "engine_id"])
    assert got == [{"status": "succeeded", "engine_id": 1}, None,
                   {"status": "failed", "engine_id": None}]
    [whole] = in_reactor(store.get, [1])
    assert set(whole) >= {"id", "status"} and whole["id"] == 1 and whole["status"] is None


def test_sqlite_ids_are_sorted_and_get_reads_every_column(sqlite):
    add_all(sqlite, [row(5), row(3), row(4, status="ok", payload=b"\x00\xff")])
    assert in_reactor(sqlite.ids) == [3, 4, 5]
    [record] = in_reactor(sqlite.get, [4])
    assert list(record) == list(COLUMNS)
    assert record["payload"] == b"\x00\xff" and record["msg_id"] is None


def test_get_many_ids_at_once(store):
    add_all(store, [row(i, attempts=i) for i in range(1_200)])
    asked = list(range(1_250))[::-1]
    got = in_reactor(store.get, asked, ["attempts"])
    assert got == [None if i >= 1_200 else {"attempts": i} for i in asked]


def test_update_changes_the_fields_given_only(store):
    add_all(store, [row(0, status=None, stdout="a", after=[1])])
    in_reactor(store.update, 0, {"status": "succeeded", "after": [2, 3]})
    in_reactor(store.update, 9, {"status": "failed"})  # no such record: nothing happens
    assert in_reactor(store.get, [0, 9], ["status", "stdout", "after"]) == [
        {"status": "succeeded", "stdout": "a", "after": [2, 3]}, None]


def test_delete_some_then_all(store):
    add_all(store, [row(i) for i in range(4)])
    in_reactor(store.delete, [1, 3, 99])
    assert sorted(in_reactor(store.ids)) == [0, 2]
    in_reactor(store.delete, None)
    assert in_reactor(store.ids) == [] and in_reactor(store.get, [0]) == [None]


def test_json_columns_round_trip(store):
    add_all(store, [row(0, after=[1, 2], follow=None), row(1, after=[], follow=[0])])
    got = in_reactor(store.get, [0, 1], ["after", "follow"])
    assert got == [{"after": [1, 2], "follow": None}, {"after": [], "follow": [0]}]
    found = in_reactor(store.find, {"follow": [0]}, ["id", "after"])
    assert found == [{"id": 1, "after": []}]


def test_find_rows_are_the_records_as_tuples_in_key_order(store):
    """``db_query``'s way: the same records as ``find``, each a tuple of the keys
    asked in their order, JSON columns decoded, in id order."""
    add_all(store, [row(2, status="ok", after=[0, 1]), row(0, status="ok", after=[]),
                    row(1, status="failed")])
    rows = in_reactor(store.find_rows, {"status": "ok"}, ["after", "id", "status"])
    assert rows == [([], 0, "ok"), ([0, 1], 2, "ok")]
    assert in_reactor(store.find_rows, {"status": "lost"}, ["id"]) == []


def test_find_picks_the_keys_asked(store):
    add_all(store, [row(0, status="ok", stdout="x"), row(1, status="ok", stdout="y")])
    found = in_reactor(store.find, {"status": "ok"}, ["id", "stdout"])
    assert sorted(found, key=lambda r: r["id"]) == [{"id": 0, "stdout": "x"},
                                                    {"id": 1, "stdout": "y"}]


def test_the_no_store_records_nothing():
    store = NoStore()
    store.add(row(0, status="succeeded"))
    store.update(0, {"status": "failed"})
    store.delete([0])
    assert fired(store.get([0])) == [None]
    assert fired(store.ids()) == [] and fired(store.find({}, ["id"])) == []
    assert store.first_free_id == 0 and store.name == "none"
    assert fired(store.close()) is None


def test_memory_store_keeps_copies():
    store = MemoryStore()
    record = row(0, status="ok")
    store.add(record)
    record["status"] = "changed"
    fired(store.get([0]))[0]["status"] = "changed too"
    assert fired(store.get([0], ["status"])) == [{"status": "ok"}]
    assert store.first_free_id == 0


def test_open_store_kinds(tmp_path):
    assert isinstance(open_store("memory", None), MemoryStore)
    assert isinstance(open_store("none", None), NoStore)
    with pytest.raises(ValueError, match="needs a path"):
        open_store("sqlite", None)
    with pytest.raises(ValueError, match="unknown hub store 'mongo'"):
        open_store("mongo", tmp_path)
    opened = Opened(open_store("sqlite", tmp_path / "x.sqlite3"))
    try:
        assert isinstance(opened.store, SQLiteStore) and opened.store.name == "sqlite"
    finally:
        opened.close()


# -- the query language ---------------------------------------------------------------------
QUERY_RECORDS = [
    row(0, status="succeeded", engine_id=0, completed=10.0, after=[1, 2], follow=None),
    row(1, status=None, engine_id=None, completed=None, after=None, follow=[0]),
    row(2, status="failed", engine_id=1, completed=20.0, after=None, follow=None),
    row(3, status="succeeded", engine_id=2, completed=30.0, after=[0], follow=[0]),
]

# (query, the ids of the records it matches): the same on every store, with
# Mongo's meaning of null (a missing value: $ne and $nin match it)
QUERIES = [
    ({}, [0, 1, 2, 3]),
    ({"status": "succeeded"}, [0, 3]),
    ({"status": None}, [1]),
    ({"status": {"$eq": "failed"}}, [2]),
    ({"status": {"$eq": None}}, [1]),
    ({"status": {"$ne": None}}, [0, 2, 3]),
    ({"status": {"$ne": "succeeded"}}, [1, 2]),
    ({"completed": {"$lt": 20}}, [0]),
    ({"completed": {"$lte": 20}}, [0, 2]),
    ({"completed": {"$gt": 20}}, [3]),
    ({"completed": {"$gte": 20}}, [2, 3]),
    ({"completed": {"$gt": 5, "$lt": 25}}, [0, 2]),
    ({"engine_id": 0}, [0]),
    ({"engine_id": {"$in": [0, 2]}}, [0, 3]),
    ({"engine_id": {"$in": []}}, []),
    ({"engine_id": {"$in": [None, 1]}}, [1, 2]),
    ({"engine_id": {"$nin": [0, 2]}}, [1, 2]),
    ({"engine_id": {"$nin": []}}, [0, 1, 2, 3]),
    ({"engine_id": {"$exists": False}}, [1]),
    ({"engine_id": {"$exists": True}}, [0, 2, 3]),
    ({"status": "succeeded", "engine_id": {"$gte": 1}}, [3]),
    ({"after": [1, 2]}, [0]),
    ({"follow": [0]}, [1, 3]),
    ({"after": {"$exists": True}}, [0, 3]),
    ({"after": None}, [1, 2]),
    ({"follow": {"$eq": None}}, [0, 2]),
    ({"after": {"$ne": [0]}}, [0, 1, 2]),
    ({"follow": {"$in": [[0]]}}, [1, 3]),
]


def _query_params():
    for query, expected in QUERIES:
        yield pytest.param("memory", query, expected, id=f"memory-{query}")
        yield pytest.param("sqlite", query, expected, id=f"sqlite-{query}")


@pytest.mark.parametrize("kind, query, expected", list(_query_params()))
def test_query_operators(kind, query, expected, tmp_path):
    check_query(query, None)
    assert ids_of(r for r in QUERY_RECORDS if matches(r, query)) == expected
    opened = Opened(MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "q.sqlite3"))
    try:
        add_all(opened.store, QUERY_RECORDS)
        assert ids_of(in_reactor(opened.store.find, query, ["id"])) == expected
    finally:
        opened.close()


@pytest.mark.parametrize("query, keys, match", [
    (["status"], None, "a query is a dict, not a list"),
    ({"colour": "red"}, None, "unknown record key 'colour'"),
    ({"status": {"$regex": "s.*"}}, None, r"unknown query operator '\$regex' for 'status'"),
    ({"status": {"$eq": "ok", "$where": "1"}}, None, "unknown query operator"),
    ({"completed": {"$lt": None}}, None, r"\$lt for 'completed' compares with a number"),
    ({"engine_id": {"$in": 5}}, None, r"\$in for 'engine_id' takes a list"),
    ({}, "status", "keys is a list of record keys"),
    ({}, ["status", 3], "keys is a list of record keys"),
    ({}, ["status", "colour"], r"unknown record keys \['colour'\]"),
])
def test_check_query_refuses(query, keys, match):
    with pytest.raises(QueryError, match=match):
        check_query(query, keys)


def test_check_query_names_the_columns():
    assert check_query({}, None) == list(COLUMNS)
    assert check_query({"status": {"$exists": True}}, ["status"]) == ["id", "status"]
    assert check_query({}, ["status", "id", "status"]) == ["id", "status"]
    assert check_query({}, []) == ["id"]


# -- the SQLite store in particular -----------------------------------------------------------
def test_records_survive_close_and_reopen(sqlite_path):
    store = SQLiteStore(sqlite_path)
    assert store.first_free_id == 0
    add_all(store, [row(i, status="succeeded", payload=serialize(i), after=[i - 1])
                    for i in range(5)] + [row(10, msg_id="m", follow=[1, 2])])
    in_reactor(store.close)  # what is not handed over yet goes with the close
    again = Opened(SQLiteStore(sqlite_path))
    try:
        assert again.store.first_free_id == 11  # the largest id + 1
        assert in_reactor(again.store.ids) == [0, 1, 2, 3, 4, 10]
        assert in_reactor(again.store.get, [3, 10], ["payload", "after", "follow", "msg_id"]) == [
            {"payload": serialize(3), "after": [2], "follow": None, "msg_id": None},
            {"payload": None, "after": None, "follow": [1, 2], "msg_id": "m"}]
    finally:
        again.close()


def test_an_older_database_gains_the_new_columns(sqlite_path):
    db = sqlite3.connect(sqlite_path)
    db.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, status TEXT)")
    db.execute("INSERT INTO records VALUES (7, 'succeeded')")
    db.commit()
    db.close()
    opened = Opened(SQLiteStore(sqlite_path))
    try:
        store = opened.store
        assert store.first_free_id == 8
        add_all(store, [row(8, status="failed", follow=[7], resubmitted="x")])
        assert in_reactor(store.get, [7, 8], ["status", "follow", "resubmitted"]) == [
            {"status": "succeeded", "follow": None, "resubmitted": None},
            {"status": "failed", "follow": [7], "resubmitted": "x"}]
    finally:
        opened.close()


def test_an_unusable_database_file_fails_at_once(tmp_path):
    with pytest.raises(sqlite3.Error):
        SQLiteStore(tmp_path)  # a directory


def test_reads_see_the_records_added_just_before(sqlite):
    def turn():
        sqlite.add(row(0, status="succeeded"))
        sqlite.add(row(1, status="failed"))
        return defer.gatherResults([sqlite.get([0, 1], ["status"]), sqlite.ids(),
                                    sqlite.find({"status": "failed"}, ["id"])])

    assert in_reactor(turn) == [[{"status": "succeeded"}, {"status": "failed"}], [0, 1],
                                [{"id": 1}]]
    # added in one call, read in the next: still well before the hand-over timer
    add_all(sqlite, [row(2)])
    assert in_reactor(sqlite.ids) == [0, 1, 2]


def test_updates_and_deletes_keep_their_order_with_the_adds(sqlite):
    def turn():
        sqlite.add(row(0, status=None))
        sqlite.update(0, {"status": "succeeded"})  # after the add it follows
        sqlite.add(row(1, status="x"))
        sqlite.delete([1])
        sqlite.add(row(1, status="again"))  # re-added after its delete
        sqlite.add(row(2))
        sqlite.delete(None)
        sqlite.add(row(3, status="last"))
        return sqlite.find({}, ["id", "status"])

    assert in_reactor(turn) == [{"id": 3, "status": "last"}]

    def other_turn():
        sqlite.add(row(4, status=None))
        sqlite.update(4, {"status": "failed"})
        sqlite.add(row(5, status="ok"))
        sqlite.delete([3])
        return sqlite.find({}, ["id", "status"])

    assert in_reactor(other_turn) == [{"id": 4, "status": "failed"}, {"id": 5, "status": "ok"}]


def test_new_records_are_handed_over_at_the_end_of_the_reactor_turn(sqlite, monkeypatch):
    import twisted.internet

    clock = Clock()
    monkeypatch.setattr(twisted.internet, "reactor", clock)  # what add() schedules on
    sqlite.add(row(0))
    sqlite.add(row(1))
    [call] = clock.getDelayedCalls()  # one hand-over for every record of the turn
    assert call.getTime() == pytest.approx(HAND_OVER_EVERY) == 0
    assert sqlite._new
    clock.advance(0)
    assert not sqlite._new and clock.getDelayedCalls() == []
    sqlite.add(row(2))
    [call] = clock.getDelayedCalls()  # a new batch, a new call
    # a read hands over at once, cancelling the call
    assert in_reactor(sqlite.ids) == [0, 1, 2]
    assert clock.getDelayedCalls() == [] and not call.active()
    monkeypatch.undo()


def test_a_read_commits_the_writes_before_it(sqlite):
    """A read's answer means that every write before it survives a SIGKILL: it is
    committed (another connection sees it)."""
    import sqlite3

    add_all(sqlite, [row(7)])
    assert in_reactor(sqlite.ids) == [7]
    other = sqlite3.connect(sqlite.path)
    try:
        assert other.execute("SELECT id FROM records").fetchall() == [(7,)]
    finally:
        other.close()


def test_writes_are_committed_on_their_own_soon_after(sqlite):
    """Without a read, what was written is committed once no write has come for
    COMMIT_AFTER seconds: another connection sees it (a SIGKILL then keeps it)."""
    import threading
    import time

    from plait.kernel.controller import hubstore

    add_all(sqlite, [row(8)])
    other = sqlite3.connect(sqlite.path)
    deadline = time.monotonic() + 10
    try:
        while other.execute("SELECT id FROM records").fetchall() != [(8,)]:
            assert time.monotonic() < deadline, "the write was not committed in 10 s"
            threading.Event().wait(hubstore.COMMIT_AFTER)
    finally:
        other.close()


def test_a_bad_write_is_logged_and_the_store_goes_on(sqlite):
    errors: list[dict] = []

    def observe(event):
        if "hub database write failed" in event.get("log_format", ""):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        add_all(sqlite, [row(0, status="ok")])
        in_reactor(sqlite.update, 0, {"no_such_column": 1})
        assert in_reactor(sqlite.get, [0], ["status"]) == [{"status": "ok"}]
        add_all(sqlite, [row(1, stdout={"not": "text"})])  # SQLite cannot store a dict
        assert in_reactor(sqlite.ids) == [0]
        add_all(sqlite, [row(2, status="later")])
        in_reactor(sqlite.update, 0, {"status": "updated"})
        assert in_reactor(sqlite.find, {}, ["id", "status"]) == [
            {"id": 0, "status": "updated"}, {"id": 2, "status": "later"}]
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(errors) == 2
    assert "no_such_column" in str(errors[0]["error"])


def test_a_bad_record_does_not_take_its_neighbours_with_it(sqlite):
    add_all(sqlite, [row(0, status="ok"), row(1, stdout={"not": "text"}), row(2, status="ok")])
    assert in_reactor(sqlite.ids) == [0, 2]


def test_reads_after_close_fail_instead_of_hanging(sqlite_path):
    store = SQLiteStore(sqlite_path)
    in_reactor(store.close)
    store._thread.join(timeout=30)
    assert not store._thread.is_alive()
    [d] = in_reactor(lambda: [store.ids()])
    assert in_reactor(lambda: d.called)  # one reactor turn later: answered
    d.addErrback(lambda _: None)


# -- the hub -----------------------------------------------------------------------------------
def make_task(taskid, owner=None, after=None, follow=None, later=True, submitted=100.0):
    return Task(taskid, ControllerTask(b"P", after=after, follow=follow), submitted, None,
                taskid, owner, later)


def result(taskid, status="succeeded", engineid=0, **fields):
    return TaskResultRecord(taskid=taskid, status=status, payload=b"v%d" % taskid,
                            engineid=engineid, engine_uuid=f"uuid-{engineid}",
                            submitted=100.0, started=101.0, completed=102.0, attempts=1,
                            **fields)


def make_hub(store=None):
    return Hub(MemoryStore() if store is None else store, PREFIX)


def submit(hub, *taskids, owner=None, **options):
    tasks = [make_task(t, owner, **options) for t in taskids]
    for task in tasks:
        hub.submitted(task, b"request %d" % task.taskid)
    return tasks


def finish(hub, task, status="succeeded", engineid=0, **fields):
    hub.finished(result(task.taskid, status, engineid, **fields), task)


def test_the_hub_provides_ihub():
    assert verifyObject(IHub, make_hub())


def test_a_submitted_task_is_pending_with_what_was_submitted():
    hub = make_hub()
    client = SimpleNamespace(uuid="client-1")
    [task] = submit(hub, 4, owner=client, after=GraphDependency((1, 2)),
                    follow=GraphDependency((3,), all=False))
    [record] = fired(hub.records([4]))
    assert record == {
        "id": 4, "msg_id": msg_id(PREFIX, 4), "client_uuid": "client-1", "kind": "later",
        "submitted": 100.0, "status": None, "after": [1, 2], "follow": [3],
        "request": b"request 4"}
    assert hub.pending() == [4]
    assert fired(hub.store.ids()) == []  # unfinished: not in the store yet
    hub.submitted(make_task(5, owner=object(), later=False), None)
    [other] = fired(hub.records([5]))
    assert other["client_uuid"] is None and other["kind"] == "task"
    assert other["after"] is None and other["request"] is None


def test_a_finished_task_goes_to_the_store():
    hub = make_hub()
    [task] = submit(hub, 0, owner=SimpleNamespace(uuid="c"))
    finish(hub, task, "failed", engineid=3, stdout="out", stderr="err", pyout="1",
           engine_started=101.5, engine_completed=101.7)
    assert hub.pending() == []
    [record] = fired(hub.store.get([0]))
    assert record == {
        "id": 0, "msg_id": msg_id(PREFIX, 0), "client_uuid": "c", "kind": "later",
        "submitted": 100.0, "status": "failed", "after": None, "follow": None,
        "request": b"request 0", "started": 101.0, "completed": 102.0, "engine_id": 3,
        "engine_uuid": "uuid-3", "attempts": 1, "stdout": "out", "stderr": "err",
        "pyout": "1", "engine_started": 101.5, "engine_completed": 101.7, "payload": b"v0",
        "execution_count": None}
    assert fired(hub.records([0])) == [record]


def test_a_task_finished_unannounced_is_still_recorded():
    hub = make_hub()
    hub.finished(result(8), make_task(8))
    [record] = fired(hub.records([8]))
    assert record["msg_id"] == msg_id(PREFIX, 8) and record["status"] == "succeeded"


def test_records_keep_the_order_asked_and_say_none_for_unknown_ids():
    hub = make_hub()
    a, b = submit(hub, 0, 1)
    finish(hub, a)
    records = fired(hub.records([1, 9, 0, 1]))
    assert [r and (r["id"], r["status"]) for r in records] == [
        (1, None), None, (0, "succeeded"), (1, None)]
    records[0]["status"] = "meddled"  # a copy: the hub's pending record is untouched
    assert fired(hub.records([1]))[0]["status"] is None


def test_records_with_block_wait_for_every_pending_task():
    hub = make_hub()
    a, b, c = submit(hub, 0, 1, 2)
    finish(hub, c)
    d = hub.records([0, 1, 2, 42], block=True)
    assert pending(d)
    twice = hub.records([1, 1], block=True)
    finish(hub, b, "aborted")
    assert pending(d)
    assert [r["status"] for r in fired(twice)] == ["aborted", "aborted"]
    finish(hub, a)
    records = fired(d)
    assert [r and r["status"] for r in records] == ["succeeded", "aborted", "succeeded", None]
    assert fired(hub.records([2], block=True))[0]["status"] == "succeeded"  # at once


def test_status_sorts_pending_completed_unknown():
    hub = make_hub()
    a, _ = submit(hub, 0, 1)
    finish(hub, a)
    assert fired(hub.status([1, 0, 5, 0])) == {
        "pending": [1], "completed": [0, 0], "unknown": [5]}


def test_history_lists_every_known_task_in_submission_order():
    hub = make_hub()
    tasks = submit(hub, 3, 0, 2)
    for task, when in zip(tasks, (10.0, 11.0, 12.0), strict=True):
        task.submitted = when  # (the hub reads it from the task)
    finish(hub, tasks[0])
    hub.finished(result(1), make_task(1))  # never seen submitted: first
    assert fired(hub.history()) == [1, 3, 0, 2]


def test_query_merges_pending_and_stored_records():
    hub = make_hub()
    client = SimpleNamespace(uuid="me")
    tasks = submit(hub, 0, 1, 2, 3, owner=client)
    finish(hub, tasks[2], engineid=1)
    finish(hub, tasks[0], "failed", engineid=0)
    assert fired(hub.query({"client_uuid": "me"}, ["status"])) == [
        {"id": 0, "status": "failed"}, {"id": 1, "status": None},
        {"id": 2, "status": "succeeded"}, {"id": 3, "status": None}]
    assert fired(hub.query({"status": None}, [])) == [{"id": 1}, {"id": 3}]
    assert fired(hub.query({"status": {"$ne": "succeeded"}}, ["engine_id"])) == [
        {"id": 0, "engine_id": 0}, {"id": 1, "engine_id": None}, {"id": 3, "engine_id": None}]
    [whole] = fired(hub.query({"id": 2}))
    assert list(whole) == list(COLUMNS) and whole["payload"] == b"v2"
    pending_whole = fired(hub.query({"id": 1}))[0]
    assert list(pending_whole) == list(COLUMNS) and pending_whole["request"] == b"request 1"


def test_query_rows_are_the_query_as_columns_and_tuples():
    """Stored alone or merged with pending tasks, the same records as ``query``."""
    hub = make_hub()
    client = SimpleNamespace(uuid="me")
    tasks = submit(hub, 0, 1, 2, owner=client)
    finish(hub, tasks[0], engineid=1)
    finish(hub, tasks[2], "failed", engineid=0)
    columns, rows = fired(hub.query_rows({"client_uuid": "me"}, ["engine_id", "status"]))
    assert columns == ["id", "engine_id", "status"]
    assert rows == [(0, 1, "succeeded"), (1, None, None), (2, 0, "failed")]
    columns, rows = fired(hub.query_rows({"status": "failed"}, []))  # the store alone
    assert (columns, rows) == (["id"], [(2,)])
    columns, rows = fired(hub.query_rows({"id": 2}))
    assert columns == list(COLUMNS) and rows[0][columns.index("payload")] == b"v2"
    with pytest.raises(QueryError):
        fired(hub.query_rows({"colour": 1}))


def test_query_reads_pending_tasks_field_by_field():
    """Pending tasks are matched through a view of the task (their records made
    only when they match), and ruled out at once by a condition on a field only
    finished records have."""
    hub = make_hub()
    client = SimpleNamespace(uuid="me")
    submit(hub, 0, 1, owner=client, submitted=50.0)
    submit(hub, 2, owner=client, after=GraphDependency((0,)), submitted=60.0)
    assert fired(hub.query({"submitted": {"$gte": 55.0}}, ["after", "kind"])) == [
        {"id": 2, "after": [0], "kind": "later"}]
    assert fired(hub.query({"msg_id": hub.msg_id(1)}, ["client_uuid"])) == [
        {"id": 1, "client_uuid": "me"}]
    assert fired(hub.query({"after": {"$exists": True}}, [])) == [{"id": 2}]
    assert fired(hub.query({"engine_id": 0}, [])) == []  # (none has run)
    assert fired(hub.query({"completed": None, "kind": "later"}, [])) == [
        {"id": 0}, {"id": 1}, {"id": 2}]


@pytest.mark.parametrize("query, keys", [
    ({"colour": 1}, None), ({"status": {"$like": "%"}}, None), ({}, ["colour"]), ("x", None),
])
def test_a_bad_query_fails_the_deferred_with_query_error(query, keys):
    hub = make_hub()
    submit(hub, 0)
    d = hub.query(query, keys)
    with pytest.raises(QueryError):
        fired(d)


def test_a_malformed_operand_fails_the_deferred_with_query_error():
    hub = make_hub()
    submit(hub, 0)
    d = hub.query({"engine_id": {"$in": 5}})
    with pytest.raises(QueryError):
        fired(d)


def test_purge_refuses_unfinished_tasks_and_purges_nothing_then():
    hub = make_hub()
    a, b, c = submit(hub, 0, 1, 2)
    finish(hub, a)
    finish(hub, c)
    with pytest.raises(ValueError, match=r"cannot purge unfinished tasks: \[.*" + msg_id(PREFIX, 1)):
        fired(hub.purge([0, 1]))
    assert fired(hub.history()) == [0, 1, 2]
    assert fired(hub.purge([0, 77])) is None  # an unknown id is no matter
    assert fired(hub.history()) == [1, 2]
    assert fired(hub.records([0])) == [None]


def test_purge_all_forgets_every_finished_record_and_keeps_the_pending():
    hub = make_hub()
    a, b = submit(hub, 0, 1)
    finish(hub, a)
    assert fired(hub.purge(None)) is None
    assert fired(hub.history()) == [1]
    finish(hub, b)
    assert fired(hub.history()) == [1]


def test_msg_ids_and_task_ids_round_trip():
    hub = make_hub()
    for taskid in (0, 1, 2**48 + 5, 2**64 - 1):
        text = hub.msg_id(taskid)
        assert text == msg_id(PREFIX, taskid)
        assert text.replace("-", "").startswith(f"{PREFIX:016x}")
        assert hub.taskid(text) == taskid
        assert hub.taskid(text.upper()) == taskid
    assert Hub(MemoryStore(), PREFIX + 1).taskid(hub.msg_id(3)) is None  # another controller
    for garbage in ("not a uuid", None, 3, b"bytes", ""):
        assert hub.taskid(garbage) is None


def test_first_free_id_comes_from_the_store():
    class Remembering(MemoryStore):
        first_free_id = 42

    hub = Hub(Remembering(), PREFIX)
    assert hub.first_free_id == 42 and make_hub().first_free_id == 0
    registry = EngineRegistry()
    tc = TaskController(registry, clock=Clock(), hub=hub)
    assert tc.reserve(3) == 42 and tc.reserve(1) == 45


def test_the_task_controller_tells_the_hub_of_its_later_tasks():
    clock = Clock()
    clock.advance(500)
    registry = EngineRegistry()
    engine = FakeEngine("uuid-a", hold=False)
    registry.register(engine, engine.uuid, {})
    hub = make_hub()
    tc = TaskController(registry, clock=clock, hub=hub)
    owner = SimpleNamespace(uuid="session", seen=[])
    owner.task_finished = owner.seen.append
    data = encode_task(TaskSpec.execute("work"))
    taskid = tc.reserve(1, owner)
    assert tc.submit([(taskid, data)], owner, later=True) == []
    [record] = fired(hub.records([taskid]))
    assert (record["status"], record["client_uuid"], record["request"]) == (None, "session", data)
    clock.advance(2)
    engine.reply("value", seconds=0.5)
    [record] = fired(hub.records([taskid]))
    assert record["status"] == "succeeded" and record["engine_uuid"] == "uuid-a"
    assert record["submitted"] == 500 and record["completed"] == 502
    assert record["payload"] == serialize("value")
    assert [r.taskid for r in owner.seen] == [taskid]
    assert hub.pending() == []


def test_a_hub_over_sqlite(sqlite):
    hub = Hub(sqlite, PREFIX)
    tasks = {}

    def submit_and_finish():
        tasks.update(enumerate(submit(hub, 0, 1, 2)))
        finish(hub, tasks[0])
        finish(hub, tasks[2], "failed")
        # read in the same turn: the records just finished are there
        return defer.gatherResults([
            hub.records([0, 1, 2, 3]), hub.status([0, 1, 2, 3]), hub.history(),
            hub.query({"status": {"$in": ["failed", "succeeded"]}}, ["status"])])

    records, status, history, found = in_reactor(submit_and_finish)
    assert [r and r["status"] for r in records] == ["succeeded", None, "failed", None]
    assert status == {"pending": [1], "completed": [0, 2], "unknown": [3]}
    assert history == [0, 1, 2]
    assert found == [{"id": 0, "status": "succeeded"}, {"id": 2, "status": "failed"}]

    def block():
        d = hub.records([1], block=True)
        assert pending(d)
        finish(hub, tasks[1])  # the waiter reads the record just added: it is there
        return d

    [record] = in_reactor(block)
    assert record["status"] == "succeeded"
    in_reactor(hub.purge, [0, 1])
    assert in_reactor(hub.history) == [2]


def test_the_queue_is_left_for_the_next_run_until_finished_or_cleared(sqlite_path):
    store = SQLiteStore(sqlite_path)
    in_reactor(lambda: [store.queue(row(i, kind="later", request=b"r%d" % i, after=[0]))
                        for i in (1, 2, 3)])
    in_reactor(lambda: store.add(row(0, status="succeeded", engine_id=4)))
    in_reactor(lambda: store.add(row(2, status="succeeded")))  # finished: not queued
    in_reactor(store.ids)  # (a read: what came before is kept)
    in_reactor(store.close, timeout=30)  # (as if killed: nothing clears it)
    again = SQLiteStore(sqlite_path, load_queued=True)
    rows, outcomes = again.left_queued
    assert [(r["id"], r["request"], r["after"]) for r in rows] == [(1, b"r1", [0]), (3, b"r3", [0])]
    assert outcomes == {0: {"id": 0, "status": "succeeded", "engine_id": 4}}
    in_reactor(again.clear_queued)
    in_reactor(again.close, timeout=30)
    last = SQLiteStore(sqlite_path, load_queued=True)
    assert last.left_queued == ([], {})
    in_reactor(last.close, timeout=30)


def test_restored_tasks_pinned_to_an_engine_wait_for_it_then_give_up():
    from plait.kernel.controller.restore import REJOIN_WAIT, Restorer

    def pinned(engine: int) -> bytes:
        return encode_task(TaskSpec.call(len, ("ab",), targets=(engine,), pinned=True))

    rows = [row(1, kind="later", request=pinned(0)), row(2, kind="later", request=pinned(5)),
            row(3, kind="later", request=encode_task(TaskSpec.call(len, ("a",))), after=[0])]
    hub = SimpleNamespace(store=SimpleNamespace(left_queued=(rows, {0: row(
        0, status="succeeded", engine_id=0)})), restored=lambda rs: taken.append(
        [r["id"] for r in rs]))
    taken: list = []
    readmitted: list = []
    tasks = SimpleNamespace(readmit=lambda items, outcomes, ran=None: readmitted.append(
        ([i for i, _, _ in items], dict(outcomes))))
    registry = EngineRegistry()
    registry.register(FakeEngine("a"), "a", {})  # engine 0 rejoined already
    clock = Clock()
    assert Restorer(hub, tasks, registry, clock).restore() == 3
    assert taken == [[1, 2, 3]]
    assert readmitted == [([1, 3], {0: (True, 0)})]  # task 2 waits for engine 5
    clock.advance(REJOIN_WAIT)  # it did not come back: taken now, to fail as pinned
    assert readmitted[1][0] == [2] and clock.getDelayedCalls() == []


def test_a_task_queued_and_finished_in_one_turn_is_never_written_as_queued(sqlite_path):
    store = SQLiteStore(sqlite_path)

    def both() -> None:
        store.queue(row(5, kind="later"))
        store.add(row(5, status="succeeded"))

    in_reactor(both)
    in_reactor(store.ids)
    seen = sqlite3.connect(sqlite_path)
    try:
        assert seen.execute("SELECT count(*) FROM queued").fetchone() == (0,)
    finally:
        seen.close()
    in_reactor(store.close, timeout=30)


def test_a_task_finishing_while_the_store_reads_is_pending_not_unknown():
    class Slow(MemoryStore):  # a store whose reads answer later, as SQLite's do
        def __init__(self):
            super().__init__()
            self.reads: list[defer.Deferred] = []

        def get(self, taskids, keys=None):
            answer = super().get(taskids, keys)
            later: defer.Deferred = defer.Deferred()
            self.reads.append(later)
            return later.addCallback(lambda _: answer.result)

    store = Slow()
    hub = make_hub(store)
    [task] = submit(hub, 7)
    status = hub.status([7])
    finish(hub, task)  # before the store answers
    store.reads.pop().callback(None)
    assert fired(status) == {"pending": [7], "completed": [], "unknown": []}
    again = hub.status([7])
    store.reads.pop().callback(None)
    assert fired(again) == {"pending": [], "completed": [7], "unknown": []}


def test_restored_tasks_wait_for_the_engines_of_the_last_run(tmp_path):
    from plait.kernel.controller.restore import ALL_BACK_WAIT, Restorer

    ids = tmp_path / "engineids"
    last = EngineRegistry(ids_path=ids)
    for u in "ab":
        last.register(FakeEngine(u), u, {})  # (and then the controller died)
    rows = [row(4, kind="later", request=encode_task(TaskSpec.call(len, ("a",), targets=(1,))))]
    hub = SimpleNamespace(store=SimpleNamespace(left_queued=(rows, {})),
                          restored=lambda rs: None)
    readmitted: list = []
    tasks = SimpleNamespace(readmit=lambda items, outcomes, ran=None: readmitted.append(
        [i for i, _, _ in items]))
    registry = EngineRegistry(ids_path=ids, restore=True)
    assert registry.last_registered == [0, 1]
    clock = Clock()
    Restorer(hub, tasks, registry, clock).restore()
    registry.register(FakeEngine("a"), "a", {}, engine_id=0, rejoin=True)
    assert readmitted == []  # engine 1 is not back yet
    registry.register(FakeEngine("b"), "b", {}, engine_id=1, rejoin=True)
    assert readmitted == [[4]] and clock.getDelayedCalls() == []
    # an engine that never comes back holds them ALL_BACK_WAIT seconds at most
    registry2 = EngineRegistry(ids_path=tmp_path / "other")
    registry2.last_registered = [3]
    Restorer(hub, tasks, registry2, clock).restore()
    clock.advance(ALL_BACK_WAIT)
    assert readmitted[-1] == [4]


def test_engines_still_awaited_when_a_restarted_controller_dies_are_awaited_by_the_next(
        tmp_path):
    from plait.kernel.controller.registry import _load_ids
    from plait.kernel.controller.restore import ALL_BACK_WAIT, Restorer

    ids = tmp_path / "engineids"
    first = EngineRegistry(ids_path=ids)
    for u in "ab":
        first.register(FakeEngine(u), u, {})  # (and then the controller died)
    rows = [row(4, kind="later", request=encode_task(TaskSpec.call(len, ("a",))))]
    hub = SimpleNamespace(store=SimpleNamespace(left_queued=(rows, {})),
                          restored=lambda rs: None)
    readmitted: list = []
    tasks = SimpleNamespace(readmit=lambda items, outcomes, ran=None: readmitted.append(
        [i for i, _, _ in items]))
    clock = Clock()
    second = EngineRegistry(ids_path=ids, restore=True)
    Restorer(hub, tasks, second, Clock()).restore()  # (a run that dies: its clock stops)
    second.register(FakeEngine("a"), "a", {}, engine_id=0, rejoin=True)
    # engine 1, busy with a long task, is not back when this one dies too
    assert _load_ids(ids) == (2, [0, 1])
    third = EngineRegistry(ids_path=ids, restore=True)
    assert third.last_registered == [0, 1]
    Restorer(hub, tasks, third, clock).restore()
    third.register(FakeEngine("b"), "b", {}, engine_id=1, rejoin=True)
    assert readmitted == [] and _load_ids(ids) == (2, [0, 1])  # engine 0 still to come
    clock.advance(ALL_BACK_WAIT)  # it does not: no longer awaited
    assert readmitted == [[4]] and _load_ids(ids) == (2, [1])
    nothing = SimpleNamespace(store=SimpleNamespace(left_queued=([], {})))
    fourth = EngineRegistry(ids_path=ids, restore=True)
    Restorer(nothing, tasks, fourth, clock).restore()  # no tasks: no one awaited
    assert _load_ids(ids) == (2, [])


def test_an_engine_handed_on_by_a_controller_that_died_hands_its_result_to_the_next(
        tmp_path):
    from plait.kernel.controller.restore import Restorer

    ids = tmp_path / "engineids"
    EngineRegistry(ids_path=ids).register(FakeEngine("a"), "a", {})  # (then it died)
    rows = [row(4, kind="later", request=encode_task(TaskSpec.call(len, ("a",))))]
    hub = SimpleNamespace(store=SimpleNamespace(left_queued=(rows, {})),
                          restored=lambda rs: None)
    readmitted: list = []
    tasks = SimpleNamespace(readmit=lambda items, outcomes, ran=None: readmitted.append(
        ([i for i, _, _ in items], dict(ran or {}))))
    Restorer(hub, tasks, EngineRegistry(ids_path=ids, restore=True), Clock()).restore()
    # (engine 0, busy, is not back when that one dies too)
    last = EngineRegistry(ids_path=ids, restore=True)
    Restorer(hub, tasks, last, Clock()).restore()
    entry = (True, serialize(1), 0.1, None, None)
    last.register(FakeEngine("a"), "a", {}, engine_id=0, rejoin=True, ran=[(4, entry)])
    assert readmitted == [([4], {4: (0, entry)})]  # taken back finished, with its value


def test_a_failed_batch_answers_its_reads_with_the_error_and_the_store_goes_on(
        sqlite_path, monkeypatch):
    store = SQLiteStore(sqlite_path)
    real = SQLiteStore._write

    def broken(db, insert, rows, op, arg):  # as a BEGIN or COMMIT that fails would
        raise sqlite3.OperationalError("database or disk is full")

    import threading

    monkeypatch.setattr(SQLiteStore, "_write", staticmethod(broken))
    hold = threading.Event()
    held = in_reactor(lambda: store._read(lambda db: hold.wait(10)) and None)  # (queued)
    # the database thread is busy: the write and the read after it make one batch
    asked: list = []

    def both() -> None:
        store.add(row(1))
        asked.append(store.ids())

    in_reactor(both)
    hold.set()
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        in_reactor(lambda: asked[0])  # an answer, not a hang
    del held
    monkeypatch.setattr(SQLiteStore, "_write", real)
    in_reactor(lambda: store.add(row(2)))
    assert in_reactor(store.ids) == [2]  # the thread lives on
    in_reactor(store.close, timeout=30)


def test_the_keeper_gives_up_after_too_many_deaths(tmp_path, monkeypatch):
    import signal

    from plait.cluster import keeper as keeper_module
    from plait.security import ProfileDirs

    dirs = ProfileDirs(tmp_path, tmp_path, tmp_path, tmp_path)
    monkeypatch.setattr(keeper_module._state, "read_state", lambda d: {"controller": 1})
    keeper = keeper_module.Keeper(dirs, None, [], pid=1)
    try:
        starts: list[int] = []
        monkeypatch.setattr(keeper, "_wait_for_exit", lambda: None)  # it died, at once
        monkeypatch.setattr(keeper, "_restart", lambda: starts.append(1) or True)
        assert keeper.run() == 1
        assert len(starts) == keeper_module.MAX_RESTARTS
        log = (tmp_path / "ipcluster-keeper.log").read_text()
        assert f"died {keeper_module.MAX_RESTARTS} times within" in log
        assert "gives up" in log
        dirs.controller_stopped.write_text("stopped\n")  # a clean stop: nothing to do
        assert keeper.run() == 0
        assert "stopped cleanly" in (tmp_path / "ipcluster-keeper.log").read_text()
    finally:
        signal.set_wakeup_fd(-1)


# -- what is acknowledged is kept --------------------------------------------------------------
def _queued_ids(path) -> list[int]:
    """The ids in the queue table, as another process (a restarted controller) sees it."""
    seen = sqlite3.connect(path)
    try:
        return [i for (i,) in seen.execute("SELECT id FROM queued ORDER BY id")]
    finally:
        seen.close()


def test_accepted_tasks_are_held_and_durable_writes_them_at_once(sqlite_path):
    store = SQLiteStore(sqlite_path)
    in_reactor(lambda: [store.queue(row(i, kind="later")) for i in (1, 2)])
    in_reactor(store.ids)  # a read commits what was handed over: the held are not
    assert _queued_ids(sqlite_path) == []
    in_reactor(lambda: store.add(row(2, status="succeeded")))  # finished while held
    assert in_reactor(store.durable) is None
    assert _queued_ids(sqlite_path) == [1]  # committed: a SIGKILL now loses nothing
    in_reactor(store.close, timeout=30)


def test_held_tasks_are_queued_after_the_hold(sqlite_path, monkeypatch):
    from plait.kernel.controller import hubstore

    store = SQLiteStore(sqlite_path)
    clock = Clock()
    with monkeypatch.context() as patched:  # (the hold's timer only)
        patched.setattr(hubstore, "reactor", clock)
        in_reactor(store.queue, row(7, kind="later"))
    in_reactor(clock.advance, hubstore.QUEUE_HOLD - 0.01)
    in_reactor(store.ids)
    assert _queued_ids(sqlite_path) == []
    in_reactor(clock.advance, 0.01)
    in_reactor(store.ids)
    assert _queued_ids(sqlite_path) == [7]
    in_reactor(store.close, timeout=30)


def test_durable_never_fails_and_a_closed_store_is_durable_at_once(sqlite_path):
    store = SQLiteStore(sqlite_path)
    in_reactor(store.close, timeout=30)
    assert in_reactor(store.durable) is None
    assert fired(MemoryStore().durable()) is None and fired(NoStore().durable()) is None


def test_a_submission_is_answered_once_the_hub_keeps_it():
    class Slow(MemoryStore):
        def __init__(self):
            super().__init__()
            self.waiting: list[defer.Deferred] = []

        def durable(self):
            self.waiting.append(defer.Deferred())
            return self.waiting[-1]

    store = Slow()
    registry = EngineRegistry()
    registry.register(FakeEngine("uuid-a"), "uuid-a", {})  # (holds the task it runs)
    tc = TaskController(registry, clock=Clock(), hub=Hub(store, PREFIX))
    owner = SimpleNamespace(uuid="session", task_finished=lambda record: None)
    first = tc.reserve(2, owner)
    data = encode_task(TaskSpec.execute("work"))
    d = tc.submit_acknowledged([(first, data), (first + 5, data)], owner, later=True)
    assert pending(d)  # accepted (and running), not acknowledged yet
    assert fired(tc.get_task_result(first)) is None  # known: accepted, not finished
    store.waiting[0].callback(None)
    assert fired(d) == [(first + 5, f"task id {first + 5} was never reserved")]
    no_hub = TaskController(registry, clock=Clock())
    assert fired(no_hub.submit_acknowledged([], owner)) == []


def test_what_a_rejoining_engine_finished_is_taken_back_finished(tmp_path):
    """The successes it reports (value inline) finish with that value and do not
    run again; its failures, and tasks it does not report, run again."""
    from plait.kernel.controller.restore import Restorer

    ids = tmp_path / "engineids"
    last = EngineRegistry(ids_path=ids)
    last.register(FakeEngine("a"), "a", {})  # (and then the controller died)
    request = {i: encode_task(TaskSpec.call(len, ("x" * i,))) for i in (1, 2, 3, 4)}
    rows = [row(i, kind="later", request=request[i]) for i in (1, 2, 3, 4)]
    store = MemoryStore()
    store.left_queued = (rows, {})
    hub = Hub(store, PREFIX)
    registry = EngineRegistry(ids_path=ids, restore=True)
    clock = Clock()
    tc = TaskController(registry, clock=clock, hub=hub)
    Restorer(hub, tc, registry, clock).restore()
    engine = FakeEngine("a", hold=True)
    ran = [(1, (True, serialize("one"), 0.25, None, {"stdout": "hi\n"})),
           (2, (False, serialize("boom"), 0.1, None, None)),  # failed: it runs again
           (3, (True, None, 0.1, b"stash-key", None)),  # kept on the engine: runs again
           (99, (True, serialize("?"), 0.1, None, None))]  # not a task of the last run
    registry.register(engine, "a", {}, engine_id=0, rejoin=True, ran=ran)
    [one] = fired(hub.records([1]))
    assert one["status"] == "succeeded" and one["engine_id"] == 0 and one["stdout"] == "hi\n"
    [done] = fired(hub.records([1], block=True))
    assert done["status"] == "succeeded"
    status = tc.queue_status(verbose=True)
    assert sorted(status["pending"] + status["scheduled"]) == [2, 3, 4]  # they run again
    assert fired(hub.records([99])) == [None]


def test_an_engine_reporting_after_the_taking_back_changes_nothing(tmp_path):
    from plait.kernel.controller.restore import Restorer

    rows = [row(1, kind="later", request=encode_task(TaskSpec.call(len, ("x",))))]
    store = MemoryStore()
    store.left_queued = (rows, {})
    hub = Hub(store, PREFIX)
    registry = EngineRegistry()
    clock = Clock()
    tc = TaskController(registry, clock=clock, hub=hub)
    Restorer(hub, tc, registry, clock).restore()  # nothing expected: taken back at once
    engine = FakeEngine("a", hold=True)
    registry.register(engine, "a", {}, ran=[(1, (True, serialize(1), 0.1, None, None))])
    assert tc.queue_status(verbose=True)["pending"] == [1]  # it runs again


def test_what_an_engine_says_it_ran_must_be_plain_and_well_formed():
    from plait.adapters.engine import _ran
    from plait.wire.serialize import dumps_plain

    good = [(1, (True, b"v", 0.1, None, None))]
    assert _ran(dumps_plain(good)) == good
    for bad in ({"1": 2}, [(1, (True,))], [("1", (True, b"", 0.0, None, None))], [1]):
        with pytest.raises(TypeError, match="ran must be a list"):
            _ran(dumps_plain(bad))
    with pytest.raises(Exception, match="plain data may not load"):
        _ran(__import__("pickle").dumps(TaskSpec.call(len, ("a",))))


class DurableStore:
    """A SQLite-like store whose ``durable`` answers are the test's to give
    (``answers``: the Deferreds asked for, in order)."""

    name = "sqlite"
    keeps_requests = True

    def __init__(self):
        self.answers: list[defer.Deferred] = []

    def queue(self, row): pass

    def add(self, row): pass

    def durable(self):
        self.answers.append(defer.Deferred())
        return self.answers[-1]


class KeepingBlobs:
    """A blob server that keeps at once, and records what it keeps and drops."""

    def __init__(self):
        self.kept, self.dropped = [], []

    def keep(self, payload, written=None):
        self.kept.append(payload)
        written()
        return True

    def drop_payload(self, payload):
        self.dropped.append(payload)


def keeping_hub(monkeypatch, later: list | None = None):
    """``(hub, store, blobs)``: a hub keeping large arguments, with the reactor's
    calls made at once (``callLater`` ones appended to ``later``)."""
    from plait.kernel.controller import hub as hub_module

    monkeypatch.setattr(hub_module, "reactor", SimpleNamespace(
        callFromThread=lambda f, *a: f(*a),
        callLater=lambda t, f: (later if later is not None else []).append((t, f))))
    store, blobs = DurableStore(), KeepingBlobs()
    return Hub(store, 1, blobs), store, blobs


def test_the_kept_large_arguments_of_a_chain_go_once_its_task_is_finished(monkeypatch):
    """A task's data-channel arguments (and its recovery tasks') are kept on disk
    while it is queued; once it is finished (aborted before its recovery ran too),
    all go, after its record is committed."""
    from plait.wire.serialize import BULK

    hub, store, blobs = keeping_hub(monkeypatch)
    own, recovery = BULK + b"own", BULK + b"recovery"
    task = SimpleNamespace(taskid=5, owner=None, later=True, submitted=0.0,
                           spec=ControllerTask(own, recovery=ControllerTask(recovery)))
    hub.submitted(task, b"request")
    assert blobs.kept == [own, recovery]
    hub.finished(TaskResultRecord(taskid=5, status="aborted", payload=b"x"), task)
    assert blobs.dropped == []  # (not before its record is committed)
    store.answers[-1].callback(None)
    assert blobs.dropped == [own, recovery] and hub._kept_args == set()


def test_kept_arguments_whose_record_could_not_be_written_are_dropped_later(monkeypatch):
    """The finished record of a task with kept large arguments could not be
    written (disk full): its arguments stay (a restarted controller would run it
    again), and go once a later durable says all is on disk."""
    from plait.kernel.controller import hub as hub_module
    from plait.wire.serialize import BULK

    later: list = []
    hub, store, blobs = keeping_hub(monkeypatch, later)
    own = BULK + b"own"
    task = SimpleNamespace(taskid=5, owner=None, later=True, submitted=0.0,
                           spec=ControllerTask(own))
    hub.submitted(task, b"request")
    hub.finished(TaskResultRecord(taskid=5, status="succeeded", payload=b"x"), task)
    store.answers[-1].callback("the hub's database could not write 1 record(s): disk full")
    assert blobs.dropped == [] and [t for t, _ in later] == [hub_module.RETRY_DROP]
    later.pop()[1]()  # (RETRY_DROP seconds later: asks again)
    store.answers[-1].callback(None)
    assert blobs.dropped == [own]


def test_durable_says_when_the_queued_tasks_could_not_be_written(sqlite_path, monkeypatch):
    """A submission is acknowledged only once durable fires: when the write of the
    queue failed (disk full), it fires with why (for a while after), and the store
    goes on."""
    store = SQLiteStore(sqlite_path)

    def full(self, db, insert, op, arg):
        self._failed(sqlite3.OperationalError("database or disk is full"),
                     f"{len(arg)} queued task(s)")

    monkeypatch.setattr(SQLiteStore, "_write_queued", full)
    in_reactor(lambda: store.queue(row(1, request=b"r1", status=None)))
    problem = in_reactor(store.durable)
    assert "could not write 1 queued task(s)" in problem and "disk is full" in problem
    assert in_reactor(store.durable) == problem  # (to every submission for a while)
    monkeypatch.undo()
    monkeypatch.setattr(SQLiteStore, "FAILURES_TOLD_FOR", 0.0)
    in_reactor(lambda: store.queue(row(2, request=b"r2", status=None)))
    assert in_reactor(store.durable) is None
    in_reactor(store.close, timeout=30)


def test_durable_says_when_a_commit_failed(sqlite_path, monkeypatch):
    store = SQLiteStore(sqlite_path)

    def broken(self, db, insert, rows, op, arg):  # as a COMMIT that fails would
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(SQLiteStore, "_write", broken)
    in_reactor(lambda: store.add(row(1)))
    problem = in_reactor(store.durable)
    assert problem is not None and "disk I/O error" in problem
    monkeypatch.undo()
    in_reactor(store.close, timeout=30)


def test_a_submission_not_kept_on_disk_is_answered_with_why():
    from plait.kernel.controller.taskstate import acknowledgment

    refused = [(3, "not reserved")]
    assert acknowledgment(refused, None) is refused
    answer = acknowledgment(refused, "the hub's database could not write: full")
    assert answer[0] == (3, "not reserved")
    assert answer[1][0] is None and "not kept on disk" in answer[1][1]
    assert "would be lost if the controller died" in answer[1][1]


def test_the_store_puts_the_queued_request_in_the_finished_record(sqlite_path):
    """The hub holds no copy of a queued task's request: the SQLite store finds it
    in its queue (or in what it holds) when the finished record comes without it."""
    store = SQLiteStore(sqlite_path)
    assert store.keeps_requests
    in_reactor(lambda: store.queue(row(1, request=b"req1", status=None)))
    assert in_reactor(store.durable) is None  # (written to the queue table)
    in_reactor(lambda: store.queue(row(2, request=b"req2", status=None)))  # (held still)
    assert in_reactor(lambda: store.queued_requests([1, 2])) == {1: b"req1", 2: b"req2"}
    in_reactor(lambda: store.add(row(1, status="succeeded")))
    in_reactor(lambda: store.add(row(2, status="succeeded")))
    got = in_reactor(lambda: store.get([1, 2], ["request", "status"]))
    assert got == [{"request": b"req1", "status": "succeeded"},
                   {"request": b"req2", "status": "succeeded"}]
    in_reactor(store.close, timeout=30)


def test_a_status_unfinished_tasks_lack_rules_them_out_of_a_query():
    hub = make_hub()
    submit(hub, 1, 2, 3)
    hub.restored([row(4, kind="later", status="failed")])  # (a row taken back: its own)
    keys = ["msg_id", "status"]
    assert [r["id"] for r in fired(hub.query({"status": "failed"}, keys))] == [4]
    assert [r["id"] for r in fired(hub.query({"status": {"$ne": "failed"}}, keys))] == [1, 2, 3]
    assert [r["id"] for r in fired(hub.query({"id": {"$gte": 2}}, keys))] == [2, 3, 4]


def test_the_database_and_its_journal_are_private(tmp_path):
    """Records hold the users' code and results: 0600 whatever the umask, and a
    database of an older controller, open to others, is made private."""
    import os
    import stat

    old = tmp_path / "old.sqlite3"
    old.write_bytes(b"")
    old.chmod(0o644)
    mask = os.umask(0o022)
    try:
        for path in (tmp_path / "hub.sqlite3", old):
            opened = Opened(SQLiteStore(path))
            add_all(opened.store, [row(1, status="ok")])
            assert in_reactor(opened.store.ids) == [1]  # (written: the journal exists)
            files = [p for p in tmp_path.iterdir() if p.name.startswith(path.name)]
            assert len(files) >= 2 and all(
                stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), files
            opened.close()
    finally:
        os.umask(mask)
