"""The Task service: wire format, engine-side runner and the TaskController.

Fake engines answer ``run_task`` with Deferreds fired by hand; the registry
and engine queues are the real ones; a ``Clock`` stamps the results.
"""

from __future__ import annotations

import pickle
import random
import time

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from plait.interfaces.engine import IEngine
from plait.interfaces.task import ITaskController, RITaskController
from plait.kernel.controller.registry import EngineRegistry
from plait.kernel.controller.task import TaskController
from plait.kernel.engine.taskrun import run_engine_task
from plait.wire.errors import (
    InvalidTaskID,
    RecoveryLoopError,
    SerializationError,
    TaskAborted,
    TaskAlreadyCompleted,
    TaskSpecError,
)
from plait.wire.records import TaskResultRecord, decode_result, encode_result
from plait.wire.serialize import deserialize, serialize
from plait.wire.task import (
    MAGIC,
    EngineTask,
    TaskSpec,
    decode_engine_task,
    decode_task,
    encode_task,
)
from support.fakes import (
    FakeEngine,
    FakeInterpreter,
    TaskHarness,
    batch_reply,
    fired,
    pending,
    submit_many,
    submit_one,
)


# -- the wire format ---------------------------------------------------------------------
def test_string_task_round_trip():
    def dep(properties):
        return properties.get("ram", 0) > 4

    spec = TaskSpec.string("a = 1", pull="a", push={"x": 2}, clear_before=True,
                           retries=3, depend=dep)
    task = decode_task(encode_task(spec))
    assert task.retries == 3 and task.recovery is None
    assert task.depend({"ram": 8}) is True and task.depend({}) is False
    assert task.depend_key == serialize(dep)
    engine_part = decode_engine_task(task.payload)
    assert engine_part == EngineTask(
        kind="string", expression="a = 1", function=None, args=(), kwargs={}, push={"x": 2},
        pull=("a",), clear_before=True, clear_after=False,
    )


def test_recovery_chain_round_trip():
    last = TaskSpec.string("c", retries=2)
    spec = TaskSpec.string("a", recovery_task=TaskSpec.map(len, ["xy"], recovery_task=last))
    task = decode_task(encode_task(spec))
    assert decode_engine_task(task.recovery.payload).function is len
    assert decode_engine_task(task.recovery.recovery.payload).expression == "c"
    assert task.recovery.recovery.retries == 2
    assert task.recovery.recovery.recovery is None


def test_recovery_loops_are_refused_at_submission():
    a, b = TaskSpec.string("a"), TaskSpec.string("b")
    a.recovery_task, b.recovery_task = b, a
    with pytest.raises(RecoveryLoopError, match="loops"):
        encode_task(a)
    a.recovery_task = a
    with pytest.raises(RecoveryLoopError):
        encode_task(a)


def test_overlong_recovery_chain_is_refused():
    spec = TaskSpec.string("0")
    for i in range(1, 300):
        spec = TaskSpec.string(str(i), recovery_task=spec)
    with pytest.raises(TaskSpecError, match="longer than"):
        encode_task(spec)


def test_controller_refuses_a_crafted_looping_envelope():
    envelope = {"engine": serialize(None), "retries": 0, "depend": None}
    envelope["recovery"] = envelope
    with pytest.raises(RecoveryLoopError):
        decode_task(MAGIC + pickle.dumps(envelope))


@pytest.mark.parametrize(
    "data",
    [b"nonsense", MAGIC + b"garbage", MAGIC + pickle.dumps(None), MAGIC + pickle.dumps([1]),
     MAGIC + pickle.dumps({"engine": b"", "retries": 0}),
     MAGIC + pickle.dumps({"engine": b"P", "retries": -1}),
     MAGIC + pickle.dumps({"engine": b"P", "retries": 0, "depend": 5})],
)
def test_malformed_envelopes_are_refused(data):
    with pytest.raises(TaskSpecError):
        decode_task(data)


def test_controller_never_unpickles_objects_in_the_envelope():
    data = MAGIC + pickle.dumps({"engine": b"P", "retries": 0, "depend": None, "x": Clock()})
    with pytest.raises(TaskSpecError, match="may not refer"):
        decode_task(data)


def test_depend_that_is_not_callable_fails_at_submission():
    data = MAGIC + pickle.dumps({"engine": b"P", "retries": 0, "depend": serialize(42)})
    with pytest.raises(SerializationError, match="not callable"):
        decode_task(data)


def test_unreadable_depend_fails_at_submission():
    missing = b"P" + b"cno_such_module_for_plait\nf\n."  # a pickle naming a missing global
    data = MAGIC + pickle.dumps({"engine": b"P", "retries": 0, "depend": missing})
    with pytest.raises(SerializationError):
        decode_task(data)
    cluster = TaskHarness()
    taskid = submit_one(cluster.tc, data)  # recorded as failed, saying why: not lost
    assert cluster.tc.queue_status()["scheduled"] == 0
    assert cluster.result(taskid).failure().ename == "SerializationError"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (TaskSpec("shell", expression="x"), "kind"),
        (TaskSpec("string", expression=None), "source"),
        (TaskSpec("string", expression="x", args=(1,)), "no function"),
        (TaskSpec.map(len, pull="a"), "pull is for string tasks"),
        (TaskSpec("map", function=3), "callable"),
        (TaskSpec("map", function=len, expression="x"), "no expression"),
        (TaskSpec("map", function=len, kwargs=[1]), "kwargs"),
        (TaskSpec.string("x", pull=["a", 2]), "pull"),
        (TaskSpec.string("x", push={1: 2}), "push"),
        (TaskSpec.string("x", push={"a-b": 2}), "push"),
        (TaskSpec.string("x", pull="a b"), "pull"),
        (TaskSpec.string("x", retries=-1), "retries"),
        (TaskSpec.string("x", retries=True), "retries"),
        (TaskSpec.string("x", depend="yes"), "depend"),
        (TaskSpec.string("x", recovery_task="y"), "recovery_task"),
    ],
)
def test_bad_specs_are_refused(spec, match):
    with pytest.raises(TaskSpecError, match=match):
        encode_task(spec)


def test_unpicklable_push_is_a_serialization_error():
    with pytest.raises(SerializationError):
        encode_task(TaskSpec.string("x", push={"lock": __import__("threading").Lock()}))


def test_result_record_round_trip():
    record = TaskResultRecord(taskid=3, status="succeeded", payload=serialize({"a": 1}),
                              engineid=1, engine_uuid="u", submitted=1.0, started=2.0,
                              completed=4.5, attempts=2, failed_on=[0])
    back = decode_result(encode_result(record))
    assert back == record
    assert back.ok and back.duration == 2.5 and back.value() == {"a": 1}
    assert back.failure() is None
    failed = TaskResultRecord(taskid=4, status="failed", payload=serialize(None))
    with pytest.raises(SerializationError, match="no value"):
        failed.value()
    with pytest.raises(SerializationError):
        decode_result(serialize([1, 2]))


# -- the engine side --------------------------------------------------------------------
def engine_part(spec: TaskSpec) -> EngineTask:
    return decode_engine_task(decode_task(encode_task(spec)).payload)


def test_run_string_task_in_order():
    interp = FakeInterpreter()
    interp.ns["old"] = 1
    spec = TaskSpec.string("b = a * 2", push={"a": 21}, pull=["a", "b"],
                           clear_before=True, clear_after=True)
    assert run_engine_task(interp, engine_part(spec)) == {"a": 21, "b": 42}
    assert interp.log == ["reset", "push", "execute", "pull", "reset"]
    assert interp.ns == {}


def test_run_string_task_without_pull_is_an_empty_dict():
    interp = FakeInterpreter()
    assert run_engine_task(interp, engine_part(TaskSpec.string("a = 1"))) == {}
    assert interp.ns["a"] == 1
    assert interp.log == ["execute"]


def test_run_map_task_returns_the_value():
    interp = FakeInterpreter()
    spec = TaskSpec.map(lambda x, y=0: x + y, [1], {"y": 2}, push={"base": 10})
    assert run_engine_task(interp, engine_part(spec)) == 3
    assert interp.log == ["push", "apply"]
    assert interp.ns["base"] == 10


def test_clear_after_happens_even_on_failure():
    interp = FakeInterpreter()
    with pytest.raises(ZeroDivisionError):
        run_engine_task(interp, engine_part(TaskSpec.string("a = 1; 1/0", clear_after=True)))
    assert interp.log[-1] == "reset" and interp.ns == {}
    with pytest.raises(KeyError):
        run_engine_task(interp, engine_part(TaskSpec.string("a = 1", pull="zz", clear_after=True)))
    assert interp.ns == {}


def test_run_on_the_real_interpreter():
    from plait.kernel.engine.interpreter import Interpreter

    interp = Interpreter()
    interp.push({"left": 1})
    spec = TaskSpec.string("b = a + 1", push={"a": 41}, pull=["a", "b"], clear_after=True)
    assert run_engine_task(interp, engine_part(spec)) == {"a": 41, "b": 42}
    assert interp.keys() == []
    interp.push({"base": 100})
    spec = TaskSpec.map(lambda x, y=0: x * y, [6], {"y": 7}, clear_before=True)
    assert run_engine_task(interp, engine_part(spec)) == 42
    assert interp.keys() == []
    with pytest.raises(NameError):
        run_engine_task(interp, engine_part(TaskSpec.string("c = 1", pull="missing")))


def test_decode_engine_task_refuses_other_payloads():
    with pytest.raises(SerializationError):
        decode_engine_task(serialize({"not": "a task"}))


# -- the controller: basics --------------------------------------------------------------
def test_provides_the_interfaces():
    cluster = TaskHarness()
    assert verifyObject(IEngine, cluster.engines[0])
    assert verifyObject(ITaskController, cluster.tc)


def test_values_fit_the_remote_interface():
    cluster = TaskHarness(n=1)
    data = encode_task(TaskSpec.string("a", pull="a"))
    RITaskController["submit"].checkAllArgs(([(7, data)],), {}, False)
    RITaskController["reserve"].checkAllArgs((100,), {}, False)
    taskid = submit_one(cluster.tc, data)
    cluster.engines[0].reply({"a": 1})
    RITaskController["get_task_result"].checkAllArgs((taskid,), {}, False)
    RITaskController["get_task_results"].checkAllArgs(([taskid], True), {}, False)
    RITaskController["clear"].checkAllArgs((True, []), {}, False)
    RITaskController["clear"].checkAllArgs((False, [taskid]), {}, False)

    def response(method, value):
        RITaskController[method].getResponseConstraint().checkObject((True, value), False)

    response("reserve", taskid)
    response("submit", [(taskid, "task id 0 was already used")])
    response("get_task_result", encode_result(cluster.result(taskid)))
    response("get_task_result", None)
    response("queue_status", cluster.tc.queue_status())
    response("queue_status", cluster.tc.queue_status(verbose=True))
    response("info", cluster.tc.info())
    response("clear", cluster.tc.clear())
    assert RITaskController.__remote_name__ == "plait.RITaskController"


def test_run_returns_ids_at_once_and_uses_the_engine_queues():
    cluster = TaskHarness(n=2, hwm=1)
    ids = [cluster.run(f"t{i}") for i in range(3)]
    assert ids == [0, 1, 2]
    assert cluster.placement() == {0: ["t0"], 1: ["t1"]}
    assert cluster.registry.get_queue(0).status()["pending"] == ["task 0"]
    assert cluster.status()["scheduled"] == [2]
    assert cluster.status()["pending"] == [0, 1]


def test_success_record():
    cluster = TaskHarness(n=1)
    taskid = cluster.run("a = 1", pull="a")
    cluster.clock.advance(5)
    engine = cluster.engines[0]
    engine.reply({"a": 1}, seconds=4.5)
    record = cluster.result(taskid)
    assert record.ok and record.status == "succeeded"
    assert record.value() == {"a": 1}
    assert (record.taskid, record.engineid, record.engine_uuid) == (taskid, 0, "uuid-0")
    assert record.submitted == record.started == 1000.0
    assert record.completed == 1005.0
    assert record.seconds == record.duration == 4.5  # measured by the engine
    assert record.attempts == 1 and record.failed_on == []
    assert record.recovery_taskid is None and record.failure() is None


def test_started_is_when_the_engine_queue_hands_it_over():
    cluster = TaskHarness(n=1, hwm=1)
    queue = cluster.registry.get_queue(0)
    queue.window = 1
    blocker: defer.Deferred = defer.Deferred()
    queue.submit(lambda engine: blocker, label="mec")
    taskid = cluster.run("a")
    cluster.clock.advance(3)
    blocker.callback(None)
    cluster.clock.advance(4)
    cluster.engines[0].reply()
    record = cluster.result(taskid)
    assert (record.submitted, record.started, record.completed) == (1000.0, 1003.0, 1007.0)


def test_duration_falls_back_to_the_controller_clock():
    record = TaskResultRecord(0, "failed", b"", started=10.0, completed=12.5)
    assert record.duration == 2.5
    assert TaskResultRecord(0, "aborted", b"", completed=12.5).duration == 0.0


def test_tasks_assigned_in_one_pass_share_a_command():
    cluster = TaskHarness(n=1, hwm=4)
    ids = submit_many(cluster, [f"t{i}" for i in range(6)])
    engine = cluster.engines[0]
    # the engine was idle: two commands, so the second half waits at the engine
    assert engine.commands == 2 and engine.names() == ["t0", "t1", "t2", "t3"]
    assert cluster.registry.get_queue(0).status()["pending"] == ["tasks 0..1 (2)",
                                                                  "tasks 2..3 (2)"]
    engine.reply()
    assert engine.commands == 2  # a slot is free only once its command is answered
    engine.reply()
    assert engine.commands == 3 and engine.names() == ["t2", "t3", "t4", "t5"]
    while engine.calls:
        engine.reply()
    assert cluster.status()["succeeded"] == ids


def test_reserve_and_submit():
    cluster = TaskHarness(n=1)
    first = cluster.tc.reserve(10)
    assert submit_one(cluster.tc, encode_task(TaskSpec.string("r"))) == first + 10
    data = encode_task(TaskSpec.string("s"))
    refused = cluster.tc.submit([(first + 3, data), (first + 3, data), (first + 99, data),
                                 (-1, data)])
    assert [taskid for taskid, _ in refused] == [first + 3, first + 99, -1]
    assert "already used" in refused[0][1] and "never reserved" in refused[1][1]
    assert cluster.status()["pending"] == [first + 10]
    assert cluster.status()["scheduled"] == [first + 3]
    with pytest.raises(ValueError, match="reserve"):
        cluster.tc.reserve(0)


def test_a_task_the_controller_cannot_read_fails_at_once_and_is_kept():
    cluster = TaskHarness(n=1)
    first = cluster.tc.reserve(1)
    assert cluster.tc.submit([(first, b"garbage")]) == []
    record = cluster.result(first)
    assert record.status == "failed" and record.failure().ename == "TaskSpecError"
    assert cluster.engines[0].calls == []


def test_get_task_results_in_one_call():
    cluster = TaskHarness(n=2, hwm=1)
    a, b = cluster.run("a"), cluster.run("b")
    assert fired(cluster.tc.get_task_results([a, b])) == [None, None]
    d = cluster.tc.get_task_results([b, a], block=True)
    cluster.engines[0].reply("A")
    assert pending(d)
    cluster.engines[1].reply("B")
    assert [r.value() for r in fired(d)] == ["B", "A"]
    with pytest.raises(InvalidTaskID):
        fired(cluster.tc.get_task_results([a, 999]))


def test_info_describes_the_scheduler():
    cluster = TaskHarness(n=2, hwm=3)
    assert cluster.tc.info() == {"scheme": "leastload", "hwm": 3, "engines": 2,
                                 "marks": {0: 3, 1: 3}}


def test_get_task_result_nonblocking_and_blocking():
    cluster = TaskHarness(n=1)
    taskid = cluster.run("a")
    assert fired(cluster.tc.get_task_result(taskid)) is None
    waiting = cluster.tc.get_task_result(taskid, block=True)
    assert pending(waiting)
    cluster.engines[0].reply(7)
    assert fired(waiting).value() == 7
    assert fired(cluster.tc.get_task_result(taskid, block=True)).value() == 7
    assert fired(cluster.tc.get_task_result(taskid)).value() == 7  # kept, not consumed


def test_cancelled_waiter_is_forgotten():
    cluster = TaskHarness(n=1)
    taskid = cluster.run("a")
    waiting = cluster.tc.get_task_result(taskid, block=True)
    waiting.cancel()
    waiting.addErrback(lambda f: f.trap(defer.CancelledError))
    cluster.engines[0].reply()
    assert cluster.result(taskid).ok


def test_unknown_ids_are_clear_errors():
    cluster = TaskHarness(n=1)
    for bad in (5, -1, "x", None, True, [0]):
        with pytest.raises(InvalidTaskID, match="never submitted"):
            fired(cluster.tc.get_task_result(bad))
        with pytest.raises(InvalidTaskID):
            cluster.tc.abort(bad)
    with pytest.raises(InvalidTaskID):
        fired(cluster.tc.barrier([5]))
    with pytest.raises(InvalidTaskID):
        cluster.tc.clear([5])


def test_queue_status_through_the_life_of_tasks():
    cluster = TaskHarness(n=1, hwm=1)
    ids = [cluster.run(f"t{i}") for i in range(5)]
    assert cluster.tc.queue_status() == {
        "scheduled": 4, "pending": 1, "succeeded": 0, "failed": 0, "aborted": 0
    }
    engine = cluster.engines[0]
    engine.reply()
    engine.fail(ValueError("bad"))
    cluster.tc.abort(ids[4])
    assert cluster.status() == {
        "scheduled": [3], "pending": [2], "succeeded": [0], "failed": [1], "aborted": [4]
    }


def test_barrier():
    cluster = TaskHarness(n=2, hwm=1)
    ids = [cluster.run(f"t{i}") for i in range(3)]
    done = cluster.tc.barrier(ids)
    single = cluster.tc.barrier(ids[0])
    assert pending(done) and pending(single)
    cluster.engines[0].reply()
    assert fired(single) is None and pending(done)
    cluster.engines[1].fail(RuntimeError("x"))  # a failure still counts as finished
    cluster.engines[0].reply()
    assert fired(done) is None
    assert fired(cluster.tc.barrier(ids)) is None
    assert fired(cluster.tc.barrier([])) is None


def test_clear_forgets_finished_results_only():
    cluster = TaskHarness(n=1, hwm=1)
    first, second, third = cluster.run("a"), cluster.run("b"), cluster.run("c")
    cluster.engines[0].reply()
    with pytest.raises(ValueError, match="only finished"):
        cluster.tc.clear([first, second])
    assert cluster.result(first).ok  # nothing was forgotten
    assert cluster.tc.clear([first, first]) == 1
    with pytest.raises(InvalidTaskID, match="cleared"):
        fired(cluster.tc.get_task_result(first))
    cluster.engines[0].reply()
    cluster.tc.abort(third)
    assert cluster.tc.clear() == 2
    assert cluster.tc.queue_status() == dict.fromkeys(
        ("scheduled", "pending", "succeeded", "failed", "aborted"), 0
    )
    assert cluster.tc.clear() == 0


# -- abort ---------------------------------------------------------------------------------
def test_abort_scheduled_task_never_runs():
    cluster = TaskHarness(n=1, hwm=1)
    running, waiting = cluster.run("a"), cluster.run("b")
    assert fired(cluster.tc.abort(waiting)) is None
    record = cluster.result(waiting)
    assert record.status == "aborted" and not record.ok
    failure = record.failure()
    assert failure.ename == "TaskAborted" and "before it ran" in failure.evalue
    assert isinstance(failure.exception(), TaskAborted)
    assert record.started is None and record.engineid is None
    cluster.engines[0].reply()
    assert cluster.result(running).ok
    assert cluster.engines[0].calls == []  # b was never sent
    assert cluster.status()["aborted"] == [waiting]


def test_abort_pending_task_reports_aborted_and_drops_the_value():
    cluster = TaskHarness(n=1, hwm=1)
    running, after = cluster.run("a"), cluster.run("b")
    cluster.tc.abort(running)
    record = cluster.result(running)
    assert record.status == "aborted" and record.engineid == 0
    assert "engine 0" in record.failure().evalue
    assert cluster.engines[0].skipped == [running]  # told not to start it
    assert cluster.engines[0].names() == ["a"]  # still busy: the slot is not free
    cluster.engines[0].reply("late")
    assert cluster.result(running).status == "aborted"
    assert cluster.engines[0].names() == ["b"]
    cluster.engines[0].reply()
    assert cluster.result(after).ok


def test_abort_pending_task_still_queued_behind_other_commands_skips_it():
    cluster = TaskHarness(n=1, hwm=0)
    queue = cluster.registry.get_queue(0)
    blocker: defer.Deferred = defer.Deferred()
    queue.submit(lambda engine: blocker, label=("mec", "execute"))
    queue.submit(lambda engine: defer.Deferred(), label=("mec", "other"))  # fills the window
    taskid = cluster.run("a")
    assert cluster.status()["pending"] == [taskid]
    cluster.tc.abort(taskid)
    blocker.callback((True, serialize(None)))
    assert cluster.engines[0].calls == []
    assert cluster.result(taskid).status == "aborted"


def test_abort_finished_task_is_an_index_error():
    cluster = TaskHarness(n=1)
    taskid = cluster.run("a")
    cluster.engines[0].reply()
    with pytest.raises(TaskAlreadyCompleted, match="already completed"):
        cluster.tc.abort(taskid)
    with pytest.raises(IndexError):
        cluster.tc.abort(taskid)


def test_abort_a_task_waiting_to_be_retried():
    cluster = TaskHarness(n=1, hwm=1)
    first, flaky = cluster.run("a"), cluster.run("b", retries=5)
    cluster.engines[0].reply()
    cluster.engines[0].fail(OSError("flaky"))
    assert cluster.engines[0].names() == ["b"]  # retried at once
    cluster.tc.abort(flaky)
    cluster.engines[0].reply()
    record = cluster.result(flaky)
    assert record.status == "aborted" and record.failed_on == [0]
    assert cluster.result(first).ok


# -- failures, retries and recovery -------------------------------------------------------
def test_failure_without_retries():
    cluster = TaskHarness(n=2)
    taskid = cluster.run("a")
    cluster.engines[0].fail(ZeroDivisionError("division by zero"))
    record = cluster.result(taskid)
    assert record.status == "failed" and record.failed_on == [0]
    failure = record.failure()
    assert failure.ename == "ZeroDivisionError"
    assert isinstance(failure.exception(), ZeroDivisionError)
    assert cluster.placement() == {}


def test_retry_goes_to_another_engine():
    cluster = TaskHarness(n=2, hwm=1)
    taskid = cluster.run("a", retries=1)
    cluster.engines[0].fail(OSError("disk"))
    assert cluster.placement() == {1: ["a"]}
    assert cluster.status()["pending"] == [taskid]
    cluster.engines[1].reply(3)
    record = cluster.result(taskid)
    assert record.ok and record.engineid == 1
    assert record.failed_on == [0] and record.attempts == 2


def test_retry_waits_for_an_engine_it_has_not_failed_on():
    cluster = TaskHarness(n=2, hwm=1)
    flaky, slow = cluster.run("flaky", retries=1), cluster.run("slow")
    assert cluster.placement() == {0: ["flaky"], 1: ["slow"]}
    cluster.engines[0].fail(OSError("x"))
    assert cluster.placement() == {1: ["slow"]}  # engine 0 is idle but avoided
    assert cluster.status()["scheduled"] == [flaky]
    cluster.engines[1].reply()
    assert cluster.result(slow).ok
    assert cluster.placement() == {1: ["flaky"]}
    cluster.engines[1].reply()
    assert cluster.result(flaky).ok


def test_retry_uses_a_failed_engine_when_no_other_exists():
    cluster = TaskHarness(n=1)
    taskid = cluster.run("a", retries=2)
    cluster.engines[0].fail(OSError("1"))
    cluster.engines[0].fail(OSError("2"))
    cluster.engines[0].fail(OSError("3"))
    record = cluster.result(taskid)
    assert record.status == "failed" and record.failed_on == [0, 0, 0]
    assert record.failure().evalue == "3"


def test_retry_falls_back_to_a_failed_engine_when_the_others_leave():
    cluster = TaskHarness(n=2, hwm=1)
    flaky, slow = cluster.run("flaky", retries=1), cluster.run("slow", retries=0)
    cluster.engines[0].fail(OSError("x"))
    assert cluster.status()["scheduled"] == [flaky]  # waiting for engine 1
    cluster.registry.unregister(1, "killed")
    assert cluster.placement() == {0: ["flaky"], 1: ["slow"]}  # 1's call is dead
    cluster.engines[0].reply()
    assert cluster.result(flaky).ok and cluster.result(flaky).failed_on == [0]
    assert cluster.result(slow).status == "failed"


def test_retries_run_out():
    cluster = TaskHarness(n=3, hwm=1)
    taskid = cluster.run("a", retries=2)
    for engine_id in (0, 1, 2):
        assert cluster.placement() == {engine_id: ["a"]}
        cluster.engines[engine_id].fail(OSError(str(engine_id)))
    record = cluster.result(taskid)
    assert record.status == "failed" and record.failed_on == [0, 1, 2]
    assert record.attempts == 3


def test_engine_lost_without_retries_fails_with_engine_error():
    cluster = TaskHarness(n=2, hwm=1)
    taskid = cluster.run("a")
    cluster.registry.unregister(0, "killed")
    record = cluster.result(taskid)
    assert record.status == "failed" and record.engineid == 0
    failure = record.failure()
    assert failure.ename == "EngineError" and "engine 0" in failure.evalue
    assert failure.engine_id == 0


def test_engine_lost_with_retries_reruns_elsewhere():
    cluster = TaskHarness(n=2, hwm=1)
    lost, other = cluster.run("lost", retries=1), cluster.run("other")
    cluster.registry.unregister(0, "killed")
    assert cluster.status()["scheduled"] == [lost]  # engine 1 is busy: wait for it
    cluster.engines[1].reply()
    assert cluster.engines[1].names() == ["lost"]
    cluster.engines[1].reply("ok")
    record = cluster.result(lost)
    assert record.ok and record.engineid == 1 and record.failed_on == [0]
    assert cluster.result(other).ok


def test_engine_lost_with_many_queued_tasks_loses_none():
    cluster = TaskHarness(n=2, hwm=0)
    ids = [cluster.run(f"t{i}", retries=1) for i in range(10)]
    assert len(cluster.registry.get_queue(0)) == 5
    cluster.registry.unregister(0, "killed")
    assert len(cluster.registry.get_queue(1)) == 10
    while cluster.engines[1].calls:
        cluster.engines[1].reply()
    assert cluster.status()["succeeded"] == ids


def test_tasks_wait_when_every_engine_is_gone():
    cluster = TaskHarness(n=1)
    taskid = cluster.run("a", retries=1)
    cluster.registry.unregister(0, "killed")
    assert cluster.status()["scheduled"] == [taskid]
    late = cluster.add()
    assert late.names() == ["a"]
    late.reply()
    assert cluster.result(taskid).ok


def test_recovery_task_runs_after_retries_and_is_named():
    cluster = TaskHarness(n=1)
    spec = TaskSpec.string("main", retries=1,
                           recovery_task=TaskSpec.string("rescue", pull="x"))
    taskid = submit_one(cluster.tc, encode_task(spec))
    engine = cluster.engines[0]
    engine.fail(OSError("1"))
    engine.fail(OSError("2"))
    assert cluster.status()["pending"] == [taskid, taskid + 1]  # it waits for its rescue
    assert engine.names() == ["rescue"]
    engine.reply({"x": 1})
    # the rescue ran in its place: its result is the rescue's, its own failure kept
    record = cluster.result(taskid)
    assert record.ok and record.value() == {"x": 1} and record.recovery_taskid == taskid + 1
    assert deserialize(record.recovered_from).evalue == "2"
    recovery = cluster.result(taskid + 1)
    assert recovery.ok and recovery.recovery_of == taskid and recovery.value() == {"x": 1}


def test_recovery_chain_has_its_own_retries_and_recovery():
    cluster = TaskHarness(n=1)
    last = TaskSpec.string("last")
    middle = TaskSpec.string("middle", retries=1, recovery_task=last)
    taskid = submit_one(cluster.tc, encode_task(TaskSpec.string("first", recovery_task=middle)))
    engine = cluster.engines[0]
    engine.fail(OSError("first"))
    engine.fail(OSError("middle 1"))
    engine.fail(OSError("middle 2"))
    middle_id, last_id = taskid + 1, taskid + 2
    assert engine.names() == ["last"]
    engine.reply()
    assert cluster.result(last_id).ok
    assert cluster.result(taskid).recovery_taskid == middle_id
    assert cluster.result(middle_id).recovery_taskid == last_id
    assert deserialize(cluster.result(taskid).recovered_from).evalue == "first"
    assert deserialize(cluster.result(middle_id).recovered_from).evalue == "middle 2"
    assert cluster.status()["failed"] == []
    assert cluster.status()["succeeded"] == [taskid, middle_id, last_id]


def test_queue_cleared_by_the_multiengine_side_reschedules():
    cluster = TaskHarness(n=1, hwm=0)
    queue = cluster.registry.get_queue(0)
    queue.window = 1
    first, second = cluster.run("a"), cluster.run("b")
    assert queue.clear() == 1  # b was waiting behind a
    assert cluster.status()["pending"] == [first, second]  # b went straight back
    cluster.engines[0].reply()
    cluster.engines[0].reply()
    assert cluster.result(second).ok and cluster.result(second).failed_on == []


def test_engines_that_answer_synchronously():
    cluster = TaskHarness(n=2, hwm=1)
    for engine in cluster.engines.values():
        engine.run_task = lambda task: defer.succeed(batch_reply(task, "now"))
    ids = [cluster.run(f"t{i}") for i in range(20)]
    assert cluster.status()["succeeded"] == ids
    assert {cluster.result(i).engineid for i in ids} == {0, 1}


def test_engines_that_fail_synchronously_use_up_retries_and_recover():
    cluster = TaskHarness(n=2, hwm=1)
    for engine in cluster.engines.values():
        engine.run_task = lambda task: defer.fail(OSError("refused"))
    spec = TaskSpec.string("a", retries=3, recovery_task=TaskSpec.string("r"))
    taskid = submit_one(cluster.tc, encode_task(spec))
    record = cluster.result(taskid)
    assert record.failed_on == [0, 1, 0, 1]
    assert record.status == "failed"  # its recovery's failure, in its place
    assert cluster.result(record.recovery_taskid).status == "failed"


def test_engine_gone_before_the_registry_tells_us():
    """An observer ahead of ours submits a task while an engine is being removed."""
    registry = EngineRegistry()
    engines = [FakeEngine("u0", hold=False), FakeEngine("u1", hold=False)]
    for engine in engines:
        registry.register(engine, engine.uuid, {"big": True})
    submitted: list[int] = []

    class Hook:
        def engine_removed(self, engine_id):
            spec = TaskSpec.string("late", depend=lambda p: p["big"])
            submitted.append(submit_one(tc, encode_task(spec)))

    registry.add_observer(Hook())
    tc = TaskController(registry, "leastload", 1)
    busy = submit_one(tc, encode_task(TaskSpec.string("busy")))
    assert engines[0].names() == ["busy"]
    registry.unregister(1, "killed")
    assert tc.queue_status(verbose=True)["scheduled"] == submitted
    engines[0].reply()
    assert engines[0].names() == ["late"]
    engines[0].reply()
    assert fired(tc.get_task_result(submitted[0])).ok
    assert fired(tc.get_task_result(busy)).ok


def test_dispatch_to_an_engine_that_vanished_requeues():
    class Vanishing(EngineRegistry):
        gone: set[int] = set()

        def get_queue(self, engine_id):
            if engine_id in self.gone:
                raise KeyError(engine_id)
            return super().get_queue(engine_id)

    registry = Vanishing()
    engines = [FakeEngine("u0", hold=False), FakeEngine("u1", hold=False)]
    for engine in engines:
        registry.register(engine, engine.uuid, {})
    tc = TaskController(registry, "lru", 1)
    first = submit_one(tc, encode_task(TaskSpec.string("first")))
    registry.gone.add(1)
    second = submit_one(tc, encode_task(TaskSpec.string("second")))  # lru picks engine 1: gone
    assert tc.queue_status(verbose=True)["scheduled"] == [second]
    assert engines[1].calls == []
    engines[0].reply()
    assert engines[0].names() == ["second"]
    engines[0].reply()
    assert fired(tc.get_task_result(first)).ok and fired(tc.get_task_result(second)).ok


def test_malformed_reply_fails_the_task_instead_of_losing_it():
    cluster = TaskHarness(n=1)
    taskid = cluster.run("a")
    cluster.engines[0].calls.pop()[1].deferred.callback("not a reply")
    assert cluster.result(taskid).status == "failed"


# -- sharing engines with the MultiEngine interface ------------------------------------------
def test_tasks_and_multiengine_commands_share_the_engine_queue():
    cluster = TaskHarness(n=1, hwm=2)
    queue = cluster.registry.get_queue(0)
    queue.window = 1
    done: list = []
    blocker: defer.Deferred = defer.Deferred()
    queue.submit(lambda engine: blocker, label=("mec", 0)).addCallback(done.append)
    taskid = cluster.run("a")
    after = queue.submit(lambda engine: engine.execute("x"), label=("mec", 1))
    assert queue.status() == {"queue": [f"task {taskid}", ("mec", 1)], "pending": [("mec", 0)]}
    assert cluster.engines[0].calls == []
    blocker.callback("mec result")
    assert done == ["mec result"] and cluster.engines[0].names() == ["a"]
    cluster.engines[0].reply()
    assert fired(after)[0] is True
    assert cluster.result(taskid).ok


# -- depend ---------------------------------------------------------------------------------
def needs_gpu(properties):
    return properties.get("gpu", False)


def test_depend_restricts_engines():
    cluster = TaskHarness(n=2, hwm=2)
    cluster.registry.set_properties(1, {"gpu": True})
    ids = [cluster.run(f"g{i}", depend=needs_gpu) for i in range(3)]
    assert cluster.placement() == {1: ["g0", "g1"]}
    assert cluster.status()["scheduled"] == [ids[2]]


def test_task_no_engine_accepts_stays_scheduled_until_properties_change():
    cluster = TaskHarness(n=2)
    taskid = cluster.run("g", depend=needs_gpu)
    plain = cluster.run("plain")
    assert cluster.status()["scheduled"] == [taskid]
    assert cluster.placement() == {0: ["plain"]}
    cluster.registry.set_properties(1, {"gpu": True})  # no spin needed
    assert cluster.placement() == {0: ["plain"], 1: ["g"]}
    assert cluster.status()["pending"] == [taskid, plain]


def test_a_joining_engine_runs_waiting_tasks():
    cluster = TaskHarness(n=1)
    taskid = cluster.run("g", depend=needs_gpu)
    gpu = cluster.add(gpu=True)
    assert gpu.names() == ["g"]
    gpu.reply()
    assert cluster.result(taskid).engine_uuid == "uuid-1"


def test_depend_that_raises_counts_as_false():
    def broken(properties):
        return properties["missing"]

    cluster = TaskHarness(n=2)
    cluster.registry.set_properties(0, {"missing": True})
    taskid = cluster.run("a", depend=broken)
    never = cluster.run("b", depend=lambda p: 1 / 0)
    assert cluster.placement() == {0: ["a"]}
    assert cluster.status()["scheduled"] == [never]
    cluster.engines[0].reply()
    assert cluster.result(taskid).ok
    cluster.tc.abort(never)


def test_depend_sees_a_copy_of_the_properties():
    def meddle(properties):
        properties["touched"] = True
        return True

    cluster = TaskHarness(n=1)
    cluster.run("a", depend=meddle)
    assert cluster.registry.get_properties(0) == {}


def test_spin_picks_up_properties_changed_behind_our_back():
    cluster = TaskHarness(n=1)
    taskid = cluster.run("g", depend=needs_gpu)
    cluster.registry.get_properties(0)["gpu"] = True  # no notification
    cluster.tc.spin()
    assert cluster.placement() == {0: ["g"]}
    cluster.engines[0].reply()
    assert cluster.result(taskid).ok


def test_properties_lost_eligibility_keeps_task_waiting():
    cluster = TaskHarness(n=1, hwm=1, gpu=True)
    busy, gpu_task = cluster.run("busy"), cluster.run("g", depend=needs_gpu)
    cluster.registry.set_properties(0, {"gpu": False})
    cluster.engines[0].reply()
    assert cluster.status()["scheduled"] == [gpu_task]
    assert cluster.result(busy).ok


def test_retry_respects_depend():
    cluster = TaskHarness(n=3, hwm=1)
    cluster.registry.set_properties(0, {"gpu": True})
    cluster.registry.set_properties(2, {"gpu": True})
    taskid = cluster.run("g", depend=needs_gpu, retries=1)
    cluster.engines[0].fail(OSError("x"))
    assert cluster.placement() == {2: ["g"]}
    cluster.engines[2].reply()
    assert cluster.result(taskid).failed_on == [0]


# -- scheduling order, hwm and the schemes ----------------------------------------------------
def test_tasks_start_in_submission_order():
    cluster = TaskHarness(n=1, hwm=1, scheme="fifo")
    for i in range(5):
        cluster.run(f"t{i}")
    started = []
    for _ in range(5):
        started.extend(cluster.engines[0].names())
        cluster.engines[0].reply()
    assert started == ["t0", "t1", "t2", "t3", "t4"]


def test_retried_task_keeps_its_place_ahead_of_newer_ones():
    cluster = TaskHarness(n=2, hwm=1)
    flaky = cluster.run("flaky", retries=1)
    cluster.run("b")
    cluster.run("c")
    cluster.engines[0].fail(OSError("x"))  # engine 0 is avoided by flaky, so it takes c
    assert cluster.placement() == {0: ["c"], 1: ["b"]}
    cluster.engines[1].reply()
    assert cluster.engines[1].names() == ["flaky"]
    assert cluster.status()["pending"] == [flaky, 2]


@pytest.mark.parametrize("hwm", [1, 2, 3])
def test_hwm_caps_tasks_per_engine(hwm):
    cluster = TaskHarness(n=2, hwm=hwm)
    for i in range(10):
        cluster.run(f"t{i}")
    queues = {i: len(cluster.registry.get_queue(i)) for i in cluster.engines}
    assert queues == {0: hwm, 1: hwm}
    assert [cluster.tc.scheduler.load(i) for i in cluster.engines] == [hwm, hwm]
    assert cluster.tc.queue_status()["scheduled"] == 10 - 2 * hwm


def test_hwm_zero_sends_everything_at_once():
    cluster = TaskHarness(n=2, hwm=0)
    for i in range(10):
        cluster.run(f"t{i}")
    assert cluster.tc.queue_status()["scheduled"] == 0
    assert cluster.tc.queue_status()["pending"] == 10


def test_leastload_balances_uneven_tasks():
    cluster = TaskHarness(n=2, hwm=1)
    for i in range(4):
        cluster.run(f"t{i}")
    cluster.engines[1].reply()  # engine 1 is quick: it gets the next task
    cluster.engines[1].reply()
    assert cluster.placement() == {0: ["t0"], 1: ["t3"]}


@pytest.mark.parametrize("scheme", ["fifo", "lru", "plainrandom", "twobin", "leastload",
                                    "weighted"])
@pytest.mark.parametrize("hwm", [0, 1, 2])
def test_every_scheme_runs_every_task(scheme, hwm):
    cluster = TaskHarness(n=3, scheme=scheme, hwm=hwm)
    ids = [cluster.run(f"t{i}") for i in range(30)]
    rng = random.Random(scheme)
    while any(e.calls for e in cluster.engines.values()):
        busy = [e for e in cluster.engines.values() if e.calls]
        rng.choice(busy).reply()
    assert cluster.status()["succeeded"] == ids


def test_scheme_and_hwm_reach_the_scheduler():
    cluster = TaskHarness(scheme="lru", hwm=3)
    assert (cluster.tc.scheduler.name, cluster.tc.scheduler.hwm) == ("lru", 3)
    with pytest.raises(ValueError, match="valid schemes"):
        TaskController(EngineRegistry(), "nope")


# -- scale and robustness -----------------------------------------------------------------
def test_thousands_of_waiting_tasks_schedule_in_constant_time():
    cluster = TaskHarness(n=8, hwm=2)
    payload = encode_task(TaskSpec.string("t"))
    start = time.perf_counter()
    ids = [submit_one(cluster.tc, payload) for _ in range(6000)]
    engines = list(cluster.engines.values())
    while any(e.calls for e in engines):
        for engine in engines:
            if engine.calls:
                engine.reply()
    elapsed = time.perf_counter() - start
    assert cluster.tc.queue_status()["succeeded"] == len(ids)
    assert elapsed < 6.0, f"{len(ids) / elapsed:.0f} tasks/s"


def test_many_distinct_depends_stay_correct():
    cluster = TaskHarness(n=4, hwm=1)
    for engine_id in range(4):
        cluster.registry.set_properties(engine_id, {"rank": engine_id})
    ids = [cluster.run(f"t{i}", depend=lambda p, r=i % 4: p["rank"] == r) for i in range(40)]
    seen: dict[int, set] = {}
    while any(e.calls for e in cluster.engines.values()):
        for engine_id, engine in cluster.engines.items():
            if engine.calls:
                seen.setdefault(engine_id, set()).add(int(engine.names()[0][1:]) % 4)
                engine.reply()
    assert seen == {0: {0}, 1: {1}, 2: {2}, 3: {3}}
    assert cluster.status()["succeeded"] == ids


@pytest.mark.parametrize("seed", range(20))
def test_nothing_is_ever_lost(seed):
    """Random replies, failures, engine deaths, arrivals and aborts: every task ends."""
    rng = random.Random(seed)
    cluster = TaskHarness(n=3, hwm=rng.choice([0, 1, 2]),
                      scheme=rng.choice(["leastload", "lru", "twobin", "fifo"]))
    ids: list[int] = []
    for _ in range(300):
        action = rng.random()
        live = [e for e in cluster.engines.values() if e.calls and e.id in cluster.registry]
        if action < 0.35:
            spec = TaskSpec.string(f"t{len(ids)}", retries=rng.choice([0, 1, 3]))
            if rng.random() < 0.2:
                spec.recovery_task = TaskSpec.string("r")
            if rng.random() < 0.2:
                spec.depend = needs_gpu
            ids.append(submit_one(cluster.tc, encode_task(spec)))
        elif action < 0.65 and live:
            rng.choice(live).reply()
        elif action < 0.78 and live:
            rng.choice(live).fail(OSError("boom"))
        elif action < 0.83 and len(cluster.registry.get_ids()) > 1:
            cluster.registry.unregister(rng.choice(cluster.registry.get_ids()), "killed")
        elif action < 0.86:
            cluster.add(gpu=rng.random() < 0.5)
        elif action < 0.88:  # a late reply from a lost engine is ignored
            dead = [e for e in cluster.engines.values()
                    if e.calls and e.id not in cluster.registry]
            if dead:
                rng.choice(dead).reply()
        elif action < 0.93 and ids:
            try:
                cluster.tc.abort(rng.choice(ids))
            except TaskAlreadyCompleted:
                pass
        else:
            engine_id = rng.choice(cluster.registry.get_ids())
            cluster.registry.set_properties(engine_id, {"gpu": rng.random() < 0.5})
    gpu = cluster.add(gpu=True)
    cluster.add()
    for _ in range(10_000):
        live = [e for e in cluster.engines.values() if e.calls and e.id in cluster.registry]
        if not live:
            break
        rng.choice(live).reply()
    assert gpu.id in cluster.registry
    status = cluster.tc.queue_status(verbose=True)
    assert status["scheduled"] == [] and status["pending"] == []
    finished = status["succeeded"] + status["failed"] + status["aborted"]
    assert sorted(finished) == list(range(cluster.tc._ids.next_id))
    assert set(ids) <= set(finished)
    for taskid in finished:
        assert cluster.result(taskid).status in ("succeeded", "failed", "aborted")
