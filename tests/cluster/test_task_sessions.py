"""A TaskClient's life against a real cluster: nothing it submitted is lost when
the program exits, flush and close, ids that are its own, bad calls that
spoil nothing, depends that raise anything, a map that fails midway, task
timeouts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import cloudpickle
import pytest
from twisted.internet import defer

from plait.kernel import client
from plait.wire.task import encode_task
from support import in_reactor as call
from support.cluster import PYTHON

cloudpickle.register_pickle_by_value(sys.modules[__name__])

RUN_THEN_EXIT = """
import gc, json, sys
from plait.kernel import client
tc = client.TaskClient(sys.argv[1])
ids = [tc.run(client.Task("a = %d" % i, pull="a")) for i in range(int(sys.argv[2]))]
if sys.argv[3] == "drop":  # the program lets go of its client at once
    del tc
    gc.collect()
print(json.dumps(ids), flush=True)
"""

STALLED_EXIT = """
import sys
from plait.kernel.client import _submit as _tcsubmit
from plait.kernel import client
_tcsubmit.EXIT_TIMEOUT = 1.0
tc = client.TaskClient(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # the test stops the controller meanwhile
ids = [tc.run(client.Task("a = 1")) for _ in range(5)]
print("submitted", flush=True)
"""


@pytest.fixture(scope="module")
def tc(cluster4):
    return cluster4.tc()


def never(properties):
    return False


def everything(tc) -> set[int]:
    return {i for ids in tc.queue_status(verbose=True).values() for i in ids}


# -- exit, flush, close ----------------------------------------------------------------------
@pytest.mark.parametrize(("n", "client_kept"), [(5, "keep"), (1500, "keep"), (200, "drop")])
def test_tasks_run_just_before_the_program_exits_all_reach_the_controller(cluster4, tc, n,
                                                                          client_kept):
    done = subprocess.run([PYTHON, "-c", RUN_THEN_EXIT, cluster4.furl_file("tc"), str(n),
                           client_kept],
                          env=cluster4.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    ids = json.loads(done.stdout)
    assert len(set(ids)) == n
    tc.barrier(ids)  # an unknown id would raise InvalidTaskID
    assert [r.ns.a for r in tc.get_task_results(ids)] == list(range(n))
    assert set(ids) <= set(tc.queue_status(verbose=True)["succeeded"])
    tc.clear(ids)


def test_exit_waits_a_bounded_time_for_a_stalled_controller_and_says_so(cluster_factory):
    cluster = cluster_factory(1)
    controller = cluster.state()["controller"]
    proc = subprocess.Popen([PYTHON, "-c", STALLED_EXIT, cluster.furl_file("tc")],
                            env=cluster.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        os.kill(controller, signal.SIGSTOP)
        start = time.monotonic()
        out, err = proc.communicate("go\n", timeout=30)
        elapsed = time.monotonic() - start
    finally:
        os.kill(controller, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and out == "submitted\n"
    assert elapsed < 10
    assert "plait: gave up after 1 s waiting for the controller to confirm" in err


def test_wait_for_send_confirms_and_close_ends_the_client(cluster4, tc):
    mine = cluster4.tc()
    ids = [mine.run(client.MapTask(abs, args=(-i,))) for i in range(50)]
    assert mine.wait_for_send() is None
    assert set(ids) <= everything(tc)  # another client sees them all
    mine.close()
    with pytest.raises(client.PlaitConnectionError, match="closed"):
        mine.run(client.MapTask(abs, args=(1,)))
    with pytest.raises(client.PlaitConnectionError, match="closed"):
        mine.queue_status()
    assert mine.close() is None  # closing twice does nothing
    tc.barrier(ids)
    assert [r.results for r in tc.get_task_results(ids)] == list(range(50))
    with cluster4.tc() as scoped:
        taskid = scoped.run(client.Task("b = 2", pull="b"))
    with pytest.raises(client.PlaitConnectionError, match="closed"):
        scoped.get_task_result(taskid)
    assert tc.get_task_result(taskid, block=True).ns.b == 2
    tc.clear(ids + [taskid])


def test_flush_is_the_deprecated_name_of_wait_for_send(cluster4, tc):
    """``tc.flush()`` still sends and confirms, and says to call wait_for_send()
    (mec.flush() keeps its meaning: it drops stored results)."""
    taskid = tc.run(client.MapTask(abs, args=(-3,)))
    with pytest.warns(DeprecationWarning, match=r"TaskClient.flush\(\) is deprecated: call wait_for_send"):
        assert tc.flush() is None
    assert tc.get_task_result(taskid, block=True).results == 3

    @defer.inlineCallbacks
    def asynchronous():
        atc = yield client.AsyncTaskClient.connect(cluster4.furl_file("tc"))
        other = yield atc.run(client.MapTask(abs, args=(-4,)))
        with pytest.warns(DeprecationWarning, match="wait_for_send"):
            d = atc.flush()
        yield d
        result = yield atc.get_task_result(other, block=True)
        yield atc.close()
        return result.results

    assert call(asynchronous) == 4


# -- ids are each client's own -----------------------------------------------------------------
def submit_raw(tc, taskid: int):
    """Submit a task under ``taskid`` through ``tc``'s connection, bypassing ``run``;
    ``flush`` says what became of it."""
    call(tc.asynchronous._submitter.enqueue, taskid, encode_task(client.Task("z = 1")))
    return tc.wait_for_send()


def test_no_client_can_use_the_ids_of_another_or_reuse_a_cleared_one(cluster4, tc):
    owner = cluster4.tc()
    reserved = call(owner.asynchronous._submitter.take_id)  # owner's, still unused
    with pytest.raises(client.TaskSubmissionError, match="reserved by another client"):
        submit_raw(tc, reserved)
    done = tc.run(client.Task("y = 1"))
    tc.barrier(done)
    tc.clear(done)
    with pytest.raises(client.TaskSubmissionError, match="already used"):
        submit_raw(tc, done)
    owner.close()  # its unused ids are dropped: nobody may use them now
    with pytest.raises(client.TaskSubmissionError, match=r"not reserved \(any more\)"):
        submit_raw(tc, reserved + 1)


def test_a_bad_id_in_a_call_spoils_none_of_the_tasks_sent_with_it(tc):
    for _ in range(5):
        taskid = tc.run(client.Task("a = 1", pull="a"))
        with pytest.raises(client.InvalidTaskID, match="task ids are ints from 0 to 2"):
            tc.get_task_result(2**70)
        assert tc.get_task_result(taskid, block=True).ns.a == 1
    taskid = tc.run(client.Task("a = 2", pull="a"))
    with pytest.raises(Exception, match="Violation"):  # refused by the controller itself
        call(tc.asynchronous._submitter.call_after, "get_task_result", 2**70, False)
    assert tc.get_task_result(taskid, block=True).ns.a == 2
    with pytest.raises(client.InvalidTaskID):
        tc.barrier([-1])


# -- user code in the controller -------------------------------------------------------------
class Stop(BaseException):
    pass


def stop(properties):
    raise Stop("a depend that stops")


def leave(properties):
    raise SystemExit(1)


def test_a_depend_raising_systemexit_or_worse_does_not_stop_the_controller(cluster4, tc):
    before = [tc.run(client.Task("a = 1", pull="a")) for _ in range(3)]
    bad = [tc.run(client.Task("a = 2", depend=d)) for d in (stop, leave)]
    after = [tc.run(client.Task("a = 3", pull="a")) for _ in range(3)]
    assert [r.ns.a for r in tc.get_task_results(before + after, block=True)] == [1] * 3 + [3] * 3
    fresh = cluster4.tc()  # the controller still serves new clients
    assert set(bad) <= set(fresh.queue_status(verbose=True)["scheduled"])
    for taskid in bad:
        fresh.abort(taskid)
    fresh.close()


def test_a_map_that_fails_midway_leaves_no_task_behind(tc):
    known = everything(tc)
    with pytest.raises(Exception, match="lock"):
        tc.map(lambda x: x, [1, 2, threading.Lock(), 4], chunksize=1)  # chunk 3 cannot pickle
    assert everything(tc) <= known


def test_a_task_no_engine_takes_fails_at_its_timeout(tc):
    start = time.monotonic()
    result = tc.get_task_result(tc.run(client.Task("x = 1", depend=never, timeout=0.5)),
                                block=True)
    assert time.monotonic() - start >= 0.5
    assert result.status == "failed" and result.failure.ename == "DependencyTimeout"
    assert "within its timeout of 0.5 s" in result.failure.evalue


def test_close_reports_what_flush_found_and_closes_all_the_same(cluster4, tc):
    owner = cluster4.tc()
    theirs = call(owner.asynchronous._submitter.take_id)
    mine = cluster4.tc()
    call(mine.asynchronous._submitter.enqueue, theirs, encode_task(client.Task("z = 1")))
    with pytest.raises(client.TaskSubmissionError, match="reserved by another client"):
        mine.close()
    with pytest.raises(client.PlaitConnectionError, match="closed"):
        mine.spin()
    owner.close()
