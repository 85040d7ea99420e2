"""User code in the controller must not break it: depends that raise anything,
schedulers that fail, a submission that goes wrong for one task; results
kept back on an engine are fetched even through a ``clear_queue``; task
timeouts.

In-process: the fake engines of ``test_task_service``, the real registry and
engine queues, a Clock.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer
from zope.interface import implementer

from plait.interfaces.task import IScheduler
from plait.kernel.controller import scheduler as _scheduler
from plait.kernel.controller.scheduler import Scheduler
from plait.kernel.controller.task import TaskController
from plait.wire.errors import DependencyTimeout, TaskSpecError
from plait.wire.serialize import serialize
from plait.wire.task import TaskSpec, encode_task
from support.fakes import TaskHarness, fired, submit_one


class Stop(BaseException):
    """Not an Exception: what a careless depend might raise."""


def stop(properties):
    raise Stop("no")


def leave(properties):
    raise SystemExit(3)


def interrupt(properties):
    raise KeyboardInterrupt


# -- depends ----------------------------------------------------------------------------------
@pytest.mark.parametrize("depend", [stop, leave, interrupt])
def test_a_depend_raising_anything_counts_as_false_and_harms_no_other_task(depend):
    cluster = TaskHarness(n=1, hwm=0)
    first = cluster.tc.reserve(3)
    items = [(first, encode_task(TaskSpec.string("good"))),
             (first + 1, encode_task(TaskSpec.string("bad", depend=depend))),
             (first + 2, encode_task(TaskSpec.string("after")))]
    assert cluster.tc.submit(items) == []
    assert cluster.engines[0].names() == ["good", "after"]
    assert cluster.status()["scheduled"] == [first + 1]
    newcomer = cluster.add()  # evaluates the depend again: still no harm
    cluster.registry.set_properties(0, {"x": 1})
    cluster.tc.spin()
    assert newcomer.calls == [] and cluster.status()["scheduled"] == [first + 1]
    while cluster.engines[0].calls:
        cluster.engines[0].reply()
    assert cluster.status()["succeeded"] == [first, first + 2]


def test_a_task_that_cannot_be_queued_is_recorded_as_failed_alone(monkeypatch):
    cluster = TaskHarness(n=1, hwm=0)
    add = cluster.tc._waiting.add

    def fragile(key, depend_key, depend, avoid=(), only=None, never=()):
        if depend_key is not None:
            raise Stop("cannot queue this one")
        return add(key, depend_key, depend, avoid, only, never)

    monkeypatch.setattr(cluster.tc._waiting, "add", fragile)
    first = cluster.tc.reserve(3)
    items = [(first, encode_task(TaskSpec.string("a"))),
             (first + 1, encode_task(TaskSpec.string("b", depend=len))),
             (first + 2, encode_task(TaskSpec.string("c")))]
    assert cluster.tc.submit(items) == []
    failure = cluster.result(first + 1).failure()
    assert (failure.ename, failure.evalue) == ("Stop", "cannot queue this one")
    assert cluster.engines[0].names() == ["a", "c"]


# -- schedulers -------------------------------------------------------------------------------
class Flaky:
    """A scheme that fails while ``broken`` says so (raising, or naming a stranger)."""

    def __init__(self):
        self.broken: str | None = None

    def __call__(self, slots, rng):
        if self.broken == "raise":
            raise RuntimeError("bug in the scheme")
        if self.broken == "stranger":
            return _scheduler.EngineSlot(99, 0, 1, 0.0)
        return min(slots, key=lambda slot: slot.engine_id)


@pytest.mark.parametrize("how", ["raise", "stranger"])
def test_a_failing_scheme_leaves_the_task_waiting_and_sends_what_was_planned(
        how, monkeypatch):
    scheme = Flaky()
    monkeypatch.setitem(_scheduler.SCHEMES, "flaky", scheme)
    cluster = TaskHarness(n=1, scheme="flaky", hwm=0)
    first = cluster.tc.reserve(3)
    cluster.tc.submit([(first, encode_task(TaskSpec.string("a")))])
    scheme.broken = how
    cluster.tc.submit([(first + 1, encode_task(TaskSpec.string("b"))),
                       (first + 2, encode_task(TaskSpec.string("c")))])
    assert cluster.engines[0].names() == ["a"]
    assert cluster.status()["scheduled"] == [first + 1, first + 2]
    scheme.broken = None
    cluster.engines[0].reply()  # the next pass: the scheme works again
    assert cluster.engines[0].names() == ["b", "c"]


def test_a_pass_in_which_the_scheme_fails_midway_sends_what_it_planned(monkeypatch):
    calls = []

    def second_fails(slots, rng):
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("bug")
        return slots[0]

    monkeypatch.setitem(_scheduler.SCHEMES, "second_fails", second_fails)
    cluster = TaskHarness(n=2, scheme="second_fails", hwm=1)
    first = cluster.tc.reserve(2)
    cluster.tc.submit([(first, encode_task(TaskSpec.string("a"))),
                       (first + 1, encode_task(TaskSpec.string("b")))])
    assert cluster.placement() == {0: ["a"]}  # the first choice was sent
    assert cluster.status()["scheduled"] == [first + 1]
    cluster.tc.spin()
    assert cluster.placement() == {0: ["a"], 1: ["b"]}


@implementer(IScheduler)
class BrokenLoads(Scheduler):
    """An IScheduler of one's own whose bookkeeping raises."""

    def available(self):
        raise RuntimeError("bookkeeping bug")


def test_a_scheduler_that_raises_does_not_fail_the_submission():
    cluster = TaskHarness(n=1)
    tc = TaskController(cluster.registry, scheduler=BrokenLoads(hwm=1), clock=cluster.clock)
    taskid = submit_one(tc, encode_task(TaskSpec.string("a")))  # no exception here
    assert tc.queue_status(verbose=True)["scheduled"] == [taskid]


# -- values kept back on the engine -----------------------------------------------------------
def test_a_fetch_cleared_from_the_engine_queue_is_made_again():
    cluster = TaskHarness(n=1, hwm=1)
    queue = cluster.registry.get_queue(0)
    taskid = cluster.run("big")
    blockers = [defer.Deferred(), defer.Deferred()]
    for blocker in blockers:  # MultiEngine commands behind the task
        queue.submit(lambda engine, d=blocker: d, label="mec execute")
    engine = cluster.engines[0]
    engine.stash(b"k" * 16, seconds=1.5)  # ran; its value waits on the engine
    assert engine.fetches == [] and queue.status()["queue"] == [f"task {taskid} (result)"]
    assert queue.clear() == 1  # a MultiEngine clear_queue drops the fetch
    assert cluster.status()["pending"] == [taskid]  # not failed: fetched again
    assert queue.status()["queue"] == [f"task {taskid} (result)"]
    blockers[0].callback((True, serialize(None)))
    key, d = engine.fetches.pop()
    assert key == b"k" * 16
    d.callback((True, serialize("the value")))
    record = cluster.result(taskid)
    assert record.ok and record.value() == "the value" and record.seconds == 1.5


# -- timeouts ---------------------------------------------------------------------------------
def nobody(properties):
    return False


def test_a_task_no_engine_takes_fails_at_its_timeout():
    cluster = TaskHarness(n=1)
    taskid = cluster.run("x", depend=nobody, timeout=5)
    waiting = cluster.tc.get_task_result(taskid, block=True)
    cluster.clock.advance(4.9)
    assert cluster.status()["scheduled"] == [taskid]
    cluster.clock.advance(0.1)
    record = fired(waiting)
    assert record.status == "failed" and record.attempts == 0
    failure = record.failure()
    assert failure.ename == "DependencyTimeout"
    assert "found no engine to run it within its timeout of 5 s" in failure.evalue
    assert isinstance(failure.exception(), DependencyTimeout)


def test_a_task_taken_in_time_is_not_timed_out():
    cluster = TaskHarness(n=1, hwm=1)
    busy = cluster.run("busy")
    taskid = cluster.run("x", timeout=5)
    cluster.clock.advance(2)
    cluster.engines[0].reply()  # x starts within its timeout
    cluster.clock.advance(10)  # and may run as long as it needs
    cluster.engines[0].reply()
    assert cluster.result(busy).ok and cluster.result(taskid).ok
    assert not cluster.clock.getDelayedCalls()


@pytest.mark.parametrize("timeout", [-1, "5", float("inf"), True])
def test_bad_timeouts_are_refused(timeout):
    with pytest.raises(TaskSpecError, match="timeout"):
        encode_task(TaskSpec.string("x", timeout=timeout))


def test_the_engine_parts_of_a_stored_task_can_be_readdressed():
    """(a controller taking back its queue: large arguments are served elsewhere now)"""
    from plait.wire.task import decode_task, with_engine_parts

    inner = TaskSpec.string("b = 1", pull=["b"])
    outer = TaskSpec.string("a = 1", pull=["a"])
    outer.recovery_task = inner
    data = encode_task(outer, lambda part: b"old:" + serialize(part)[:8])
    assert with_engine_parts(data, lambda part: part) is data  # nothing changed
    new = with_engine_parts(data, lambda part: part.replace(b"old:", b"new:"))
    task = decode_task(new)
    assert task.payload.startswith(b"new:") and task.recovery is not None
    assert task.recovery.payload.startswith(b"new:")
    assert with_engine_parts(b"garbage", lambda part: b"x") == b"garbage"
