"""How the controller batches tasks to engines and reads the replies.

The fake engines of ``test_task_service`` receive every command; the
registry and the engine queues are the real ones.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer

from plait.wire.errors import RemoteFailure, TaskSpecError
from plait.wire.serialize import serialize
from plait.wire.task import GraphDependency, decode_batch_reply
from support.fakes import TaskHarness, submit_many


def test_engine_lost_blames_a_task_that_was_running_alone():
    cluster = TaskHarness(n=2, hwm=3)
    ids = submit_many(cluster, ["a", "b", "c", "d", "e", "f"])
    engine0 = cluster.engines[0]
    assert engine0.names() == ["a", "c", "e"] and engine0.commands == 2  # [a], [c, e]
    cluster.registry.unregister(0, "killed")
    first = cluster.result(ids[0])  # alone in the oldest command: it was running
    assert first.status == "failed" and first.failure().ename == "EngineError"
    status = cluster.status()
    assert ids[0] in status["failed"] and len(status["failed"]) == 1
    # the others at engine 0 may never have started: they wait for engine 1, not failed
    engine1 = cluster.engines[1]
    while engine1.calls or status["scheduled"]:
        engine1.reply()
        status = cluster.status()
    assert sorted(status["succeeded"]) == [i for i in ids if i != ids[0]]
    for taskid in status["succeeded"]:
        assert cluster.result(taskid).failed_on == []


def test_engine_lost_under_a_batch_blames_none_of_its_tasks():
    """The engine runs a batch one task after another: any of them may have been
    running when it died (and the first ones may be done), so none is blamed."""
    cluster = TaskHarness(n=2, hwm=0)
    ids = submit_many(cluster, [f"t{i}" for i in range(8)])
    engine0 = cluster.engines[0]
    assert engine0.commands == 2 and len(engine0.calls) == 4  # two batches of two
    cluster.registry.unregister(0, "killed")
    engine1 = cluster.engines[1]
    while engine1.calls:
        engine1.reply()
    status = cluster.status()
    assert status["failed"] == [] and sorted(status["succeeded"]) == ids
    assert all(cluster.result(i).failed_on == [] for i in ids)


def test_a_batch_that_kills_engines_is_caught_by_the_second_death():
    cluster = TaskHarness(n=3, hwm=0)
    engine0 = cluster.engines[0]
    cluster.registry.set_properties(0, {"first": True})
    names = ["kill", "x", "y", "z"]
    ids = submit_many(cluster, names, depend=lambda p: p.get("first") or p.get("next"))
    assert engine0.names() == names and engine0.commands == 2  # [kill, x], [y, z]
    cluster.registry.unregister(0, "killed")
    assert cluster.status()["scheduled"] == ids  # suspects: run again for free
    cluster.registry.set_properties(1, {"next": True})
    assert cluster.engines[1].names() == names
    cluster.registry.unregister(1, "killed")  # a second death: they all fail now
    for taskid in ids:
        record = cluster.result(taskid)
        assert record.status == "failed" and record.failure().ename == "EngineError"
        assert record.attempts == 2 and record.failed_on == [1]
    assert cluster.engines[2].calls == []


def test_commands_still_in_the_queue_when_the_engine_dies_never_ran():
    cluster = TaskHarness(n=1, hwm=0)
    cluster.add()
    first = submit_many(cluster, ["a", "b", "c", "d"])  # [a], [c] at engine 0
    later = submit_many(cluster, ["e", "f"])  # [e] waits in engine 0's queue
    queue = cluster.registry.get_queue(0)
    assert queue.status()["queue"] == [f"task {later[0]}"]
    cluster.registry.unregister(0, "killed")
    engine1 = cluster.engines[1]
    while engine1.calls:
        engine1.reply()
    assert cluster.status()["failed"] == [first[0]]  # alone and first: it was running
    for taskid in (first[2], later[0]):  # behind it, or never sent: run again for free
        record = cluster.result(taskid)
        assert record.ok and record.engineid == 1 and record.failed_on == []


def test_tasks_aborted_while_their_command_waits_are_left_out():
    cluster = TaskHarness(n=1, hwm=0)
    queue = cluster.registry.get_queue(0)
    queue.window = 1
    blocker: defer.Deferred = defer.Deferred()
    queue.submit(lambda engine: blocker, label="mec")
    ids = submit_many(cluster, ["a", "b", "c"])
    cluster.tc.abort(ids[1])
    blocker.callback(None)
    engine = cluster.engines[0]
    assert engine.names() == ["a"]  # first half: ["a"]; second half ["b", "c"] waits
    engine.reply()
    assert engine.names() == ["c"]
    engine.reply()
    assert cluster.status()["succeeded"] == [ids[0], ids[2]]
    assert cluster.status()["aborted"] == [ids[1]]


def test_every_aborted_task_of_a_command_means_nothing_is_sent():
    cluster = TaskHarness(n=1, hwm=1)
    queue = cluster.registry.get_queue(0)
    queue.window = 1
    blocker: defer.Deferred = defer.Deferred()
    queue.submit(lambda engine: blocker, label="mec")
    taskid = cluster.run("a")
    cluster.tc.abort(taskid)
    blocker.callback(None)
    assert cluster.engines[0].commands == 0
    assert cluster.tc.scheduler.load(0) == 0
    follow = cluster.run("b")  # the slot is free again
    assert cluster.engines[0].names() == ["b"]
    cluster.engines[0].reply()
    assert cluster.result(follow).ok


def test_a_large_value_is_fetched_with_a_command_of_its_own():
    cluster = TaskHarness(n=1, hwm=2)
    taskid = cluster.run("big")
    engine = cluster.engines[0]
    engine.stash(b"k" * 16, seconds=2.0)
    assert cluster.status()["pending"] == [taskid]  # not done before the value is here
    key, d = engine.fetches.pop()
    assert key == b"k" * 16
    d.callback((True, serialize("the value")))
    record = cluster.result(taskid)
    assert record.ok and record.value() == "the value" and record.seconds == 2.0


def test_a_large_failure_is_fetched_too_and_fails_the_task():
    cluster = TaskHarness(n=1, hwm=2)
    taskid = cluster.run("big")
    engine = cluster.engines[0]
    engine.stash(b"f" * 16, ok=False)
    _, d = engine.fetches.pop()
    d.callback((True, serialize(RemoteFailure("ValueError", "huge", "tb"))))
    record = cluster.result(taskid)
    assert record.status == "failed" and record.failure().ename == "ValueError"


def test_losing_the_engine_before_the_fetch_fails_the_task():
    cluster = TaskHarness(n=2, hwm=1)
    taskid = cluster.run("big", retries=1)
    engine = cluster.engines[0]
    engine.stash(b"x" * 16)
    cluster.registry.unregister(0, "killed")
    cluster.engines[1].reply("again")
    record = cluster.result(taskid)
    assert record.ok and record.failed_on == [0] and record.value() == "again"


def test_an_engine_that_cannot_run_the_batch_fails_its_tasks():
    cluster = TaskHarness(n=1)
    failure = serialize(RemoteFailure("BulkError", "download failed", ""))
    cluster.engines[0].run_task = lambda task: defer.succeed((False, failure))
    taskid = cluster.run("a")
    assert cluster.result(taskid).failure().evalue == "download failed"


@pytest.mark.parametrize("reply", [
    (True, serialize([])),                     # wrong length
    (True, serialize([(True, b"P", 0.0)])),    # short entry
    (True, b"F" + b"\0" * 12),                 # not an inline pickle
    (True, serialize([(True, b"P", 0.0, b"k")])),  # both a payload and a stash key
])
def test_unreadable_batch_replies_fail_the_tasks(reply):
    cluster = TaskHarness(n=1)
    cluster.engines[0].run_task = lambda task: defer.succeed(reply)
    taskid = cluster.run("a")
    record = cluster.result(taskid)
    assert record.status == "failed" and record.failure().ename == "TaskSpecError"


def test_batch_replies_are_read_without_unpickling_objects():
    with pytest.raises(TaskSpecError, match="unreadable"):
        decode_batch_reply(serialize([RemoteFailure("E", "v", "")]), 1)
    items = [(True, b"P", 0.5, None, None), (False, None, 1, b"key", {"unmet": True})]
    assert decode_batch_reply(serialize(items), 2) == items


def test_the_adaptive_mark_grows_batches_for_tiny_tasks_and_shrinks_for_long_ones():
    cluster = TaskHarness(n=1, hwm=None)
    engine = cluster.engines[0]
    submit_many(cluster, [f"t{i}" for i in range(200)])
    assert len(engine.calls) == 2  # unknown run time: the start mark
    while cluster.status()["scheduled"]:
        engine.reply(seconds=0.0)  # tiny tasks: the mark grows a task at a time
    assert cluster.tc.info()["marks"] == {0: 32}
    assert len(engine.calls) > 2
    while engine.calls:
        engine.reply(seconds=0.0)
    submit_many(cluster, [f"u{i}" for i in range(40)])
    first = len(engine.calls)
    assert first > 2  # committed in a batch: the case a fixed --hwm=1 is for
    for _ in range(first):
        engine.reply(seconds=1.0)  # long tasks: the mark drops to 1 at once
    assert cluster.tc.info()["marks"] == {0: 1}
    assert len(engine.calls) == 1


def test_the_dependents_a_batch_releases_leave_in_one_command():
    """A scheduling pass follows the whole batch reply, not each of its tasks: the
    tasks a batch's results release travel together (a DAG of tiny tasks would
    otherwise cost a command, and a round trip, per task)."""
    cluster = TaskHarness(n=1, hwm=0)
    engine = cluster.engines[0]
    first = submit_many(cluster, ["a", "b", "c", "d"])
    assert engine.commands == 2 and engine.names() == ["a", "b", "c", "d"]  # [a, b], [c, d]
    x = cluster.run("x", after=GraphDependency((first[0],)))
    y = cluster.run("y", after=GraphDependency((first[1],)))
    assert engine.commands == 2  # x and y wait for a and b
    engine.reply()
    engine.reply()  # [a, b] answered: x and y are released at once
    assert engine.commands == 3 and engine.names() == ["c", "d", "x", "y"]
    while engine.calls:
        engine.reply()
    assert cluster.result(x).ok and cluster.result(y).ok
