"""The engine side of the Task service: batches on a real Interpreter."""

from __future__ import annotations

import pytest

from plait.kernel.engine import taskrun as _taskrun
from plait.kernel.engine.interpreter import Interpreter
from plait.kernel.engine.taskrun import run_on_engine
from plait.wire.errors import RemoteFailure, SerializationError
from plait.wire.serialize import deserialize, serialize
from plait.wire.task import (
    StashFetch,
    TaskBatch,
    TaskSpec,
    decode_batch_reply,
    decode_task,
    encode_task,
)


def batch(*specs: TaskSpec) -> TaskBatch:
    return TaskBatch(tuple(decode_task(encode_task(spec)).payload for spec in specs))


def run(interp: Interpreter, *specs: TaskSpec) -> list:
    reply = run_on_engine(interp, batch(*specs))
    # what the controller reads: the reply as the engine sends it, plain data only
    return decode_batch_reply(serialize(reply), len(specs))


def test_tasks_run_in_order_each_timed_and_isolated():
    interp = Interpreter(engine_id=3)
    items = run(
        interp,
        TaskSpec.string("a = 1", pull="a"),
        TaskSpec.string("1/0"),
        TaskSpec.string("raise SystemExit(2)"),
        TaskSpec.string("b = a + 1", pull="b"),
    )
    oks = [ok for ok, _, _, _, _ in items]
    assert oks == [True, False, False, True]
    assert deserialize(items[0][1]) == {"a": 1}
    failure = deserialize(items[1][1])
    assert isinstance(failure, RemoteFailure) and failure.ename == "ZeroDivisionError"
    assert failure.engine_id == 3 and failure.method == "run_task"
    assert deserialize(items[2][1]).ename == "SystemExit"
    assert deserialize(items[3][1]) == {"b": 2}
    assert all(seconds >= 0 for _, _, seconds, _, _ in items)
    assert all(stash is None for _, _, _, stash, _ in items)
    # a failure's text, plain, for the status page; nothing else of the kernel's tasks
    assert [meta for *_, meta in items][::3] == [None, None]
    assert "ZeroDivisionError: division by zero" in items[1][4]["error"]
    assert "SystemExit: 2" in items[2][4]["error"] and set(items[2][4]) == {"error"}


def test_clear_options_hold_inside_a_batch():
    interp = Interpreter()
    items = run(
        interp,
        TaskSpec.string("x = 1", clear_after=True),
        TaskSpec.string("seen = 'x' in globals()", pull="seen"),
    )
    assert deserialize(items[1][1]) == {"seen": False}


def test_large_values_are_kept_back_for_a_fetch():
    interp = Interpreter()
    big = _taskrun.REPLY_BUDGET + 10
    items = run(interp, TaskSpec.map(bytes, [big]), TaskSpec.map(abs, [-1]))
    ok, payload, _, key, _ = items[0]
    assert ok and payload is None and isinstance(key, bytes)
    assert deserialize(items[1][1]) == 1
    assert run_on_engine(interp, StashFetch(key)) == bytes(big)
    with pytest.raises(KeyError, match="no task value"):
        run_on_engine(interp, StashFetch(key))
    assert key not in _taskrun._stash


def test_the_reply_budget_is_shared_by_the_batch():
    interp = Interpreter()
    third = _taskrun.REPLY_BUDGET // 3
    items = run(interp, *[TaskSpec.map(bytes, [third]) for _ in range(4)])
    kept = [key for _, payload, _, key, _ in items if payload is None]
    assert len(kept) >= 1 and items[0][3] is None
    for key in kept:
        assert run_on_engine(interp, StashFetch(key)) == bytes(third)


def test_a_large_failure_is_kept_back_and_comes_back_as_a_failure():
    interp = Interpreter()
    items = run(interp, TaskSpec.string(f"raise ValueError('x' * {_taskrun.REPLY_BUDGET})"))
    ok, payload, _, key, _ = items[0]
    assert not ok and payload is None
    shipped = serialize(run_on_engine(interp, StashFetch(key)))
    failure = deserialize(shipped)
    assert isinstance(failure, RemoteFailure) and failure.ename == "ValueError"


def test_unsendable_values_fail_their_task_only():
    interp = Interpreter()
    items = run(interp, TaskSpec.string("g = (i for i in [])", pull="g"),
                TaskSpec.string("h = 1", pull="h"))
    assert items[0][0] is False
    assert deserialize(items[0][1]).ename == "SerializationError"
    assert deserialize(items[1][1]) == {"h": 1}


def test_payloads_that_are_not_tasks_fail_alone():
    interp = Interpreter()
    reply = run_on_engine(interp, TaskBatch((serialize("not a task"),)))
    assert reply[0][0] is False and "not a task payload" in deserialize(reply[0][1]).evalue
    with pytest.raises(SerializationError, match="not a task payload"):
        run_on_engine(interp, {"what": 1})


def test_a_task_the_controller_skipped_does_not_run():
    interp = Interpreter()
    specs = [TaskSpec.string("a = 1"), TaskSpec.string("b = 2"), TaskSpec.string("c = 3")]
    payloads = tuple(decode_task(encode_task(spec)).payload for spec in specs)
    _taskrun.skip([11])
    reply = run_on_engine(interp, TaskBatch(payloads, (10, 11, 12)))
    items = decode_batch_reply(serialize(reply), 3)
    oks = [item[0] for item in items]
    assert oks == [True, False, True]
    failure = deserialize(items[1][1])
    assert failure.ename == "TaskAborted" and "before it started" in failure.evalue
    assert interp.pull(["a", "c"]) == [1, 3]
    assert "b" not in interp.namespace
    assert 11 not in _taskrun._skipped  # used once


def test_the_skip_list_stays_bounded(monkeypatch):
    monkeypatch.setattr(_taskrun, "MAX_SKIPPED", 3)
    monkeypatch.setattr(_taskrun, "_skipped", {})
    _taskrun.skip([1, 2, 3, 4, 5])
    assert list(_taskrun._skipped) == [3, 4, 5]


# -- the replies kept for a controller started again ---------------------------------------
def _run_ids(interp: Interpreter, ids: list[int]) -> None:
    payloads = tuple(decode_task(encode_task(TaskSpec.call(abs, (-i,)))).payload for i in ids)
    run_on_engine(interp, TaskBatch(payloads, tuple(ids)))


def test_recent_replies_are_kept_a_few_seconds_and_taken_once(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(_taskrun.time, "monotonic", lambda: clock[0])
    _taskrun.recent_replies()  # (what earlier tests left)
    interp = Interpreter()
    _run_ids(interp, [1, 2])
    clock[0] += _taskrun.KEEP_SECONDS - 1
    _run_ids(interp, [3])
    clock[0] += 2  # tasks 1 and 2 are too old now
    found = _taskrun.recent_replies()
    assert [taskid for taskid, _ in found] == [3]
    ok, payload, _seconds, stash, _meta = found[0][1]
    assert ok and stash is None and deserialize(payload) == 3
    assert _taskrun.recent_replies() == []  # taken


def test_recent_replies_are_bounded_in_count_and_bytes(monkeypatch):
    monkeypatch.setattr(_taskrun, "KEEP_ENTRIES", 3)
    _taskrun.recent_replies()
    interp = Interpreter()
    _run_ids(interp, list(range(10)))
    assert [taskid for taskid, _ in _taskrun.recent_replies()] == [7, 8, 9]
    monkeypatch.setattr(_taskrun, "KEEP_BYTES", 1)  # each reply is larger alone
    _run_ids(interp, [20, 21])
    assert _taskrun.recent_replies() == []
    assert _taskrun._recent_bytes[0] == 0


def test_replies_finished_after_the_controller_was_lost_are_all_kept(monkeypatch):
    clock = [5000.0]
    monkeypatch.setattr(_taskrun.time, "monotonic", lambda: clock[0])
    _taskrun.recent_replies()
    interp = Interpreter()
    _run_ids(interp, [1])
    lost_at = clock[0] + 1
    clock[0] += 30  # the task that ran on finishes long after the controller went
    _run_ids(interp, [2])
    clock[0] += 30  # and the controller took a while to come back
    assert [taskid for taskid, _ in _taskrun.recent_replies(lost_at)] == [2]


def test_what_a_task_printed_counts_in_the_bytes_kept(monkeypatch):
    _taskrun.recent_replies()
    monkeypatch.setattr(_taskrun, "KEEP_BYTES", 10_000)
    _taskrun._remember(1, (True, b"v", 0.1, None, {"stdout": "x" * 6000}))
    _taskrun._remember(2, (True, b"v", 0.1, None, {"stdout": "x" * 6000}))
    assert [t for t, _ in _taskrun.recent_replies()] == [2]  # both would not fit
    assert _taskrun._recent_bytes[0] == 0
