"""Interrupting user code on engines: ``mec.interrupt``, ``mec.send_signal`` and
``rc.send_signal(SIGINT)`` raise KeyboardInterrupt in the code an engine runs;
the engine stays, with its namespace, and runs what comes next."""

from __future__ import annotations

import os
import signal
import sys

import cloudpickle
import pytest

import plait.parallel as ipp
from plait.kernel import client
from support.cluster import Signal

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def running_pid(sig: Signal) -> int:
    """Wait (an event: the task writes to the pipe) until the hanging code runs."""
    with open(sig.path) as f:
        return int(f.read())


def test_interrupt_stops_the_code_an_engine_runs_and_the_engine_stays(mec, tmp_path):
    mec.execute("kept = 'still here'", targets=0)
    sig = Signal(tmp_path)
    pending = mec.execute(sig.code, targets=0, block=False)
    pid = running_pid(sig)
    mec.interrupt(targets=0)
    with pytest.raises(client.CompositeError) as info:
        pending.get_result(block=True)
    assert "KeyboardInterrupt" in str(info.value)
    assert mec.get_ids() == [0, 1, 2, 3]  # nobody left
    assert mec.pull("kept", targets=0) == ["still here"]
    assert mec.execute("x = 1 + 1", targets=0)[0]["number"] >= 1  # it goes on
    assert mec.pull("x", targets=0) == [2]
    assert os.path.exists(f"/proc/{pid}")


def test_interrupting_an_idle_engine_disturbs_nothing(mec):
    mec.execute("y = 5")
    mec.interrupt()  # nothing of the user's runs: ignored
    assert mec.get_ids() == [0, 1, 2, 3]
    assert mec.pull("y") == [5, 5, 5, 5]


def test_an_interrupted_task_fails_alone(cluster4, tmp_path):
    tc = cluster4.tc()
    mec = cluster4.mec()
    sig = Signal(tmp_path)
    hanging = tc.run(client.StringTask(sig.code))
    running_pid(sig)
    mec.interrupt()  # (the engines running nothing of the user's are not disturbed)
    result = tc.get_task_result(hanging, block=True)
    assert result.failure is not None and "KeyboardInterrupt" in str(result.failure)
    assert tc.get_task_result(tc.run(client.StringTask("z = 3", pull="z")),
                              block=True).ns.z == 3


def test_rc_send_signal_sigint_interrupts_an_apply(cluster4, tmp_path):
    rc = ipp.Client(cluster4.furl_file("client"))
    try:
        sig = Signal(tmp_path)
        ar = rc[1].apply_async(sig.hanger())
        running_pid(sig)
        rc.send_signal(signal.SIGINT, targets=[1])
        with pytest.raises(ipp.error.RemoteError) as info:
            ar.get(timeout=30)
        assert info.value.ename == "KeyboardInterrupt"
        assert rc.ids == [0, 1, 2, 3]
        assert rc[1].apply_sync(lambda: "after") == "after"
    finally:
        rc.close()


def test_a_number_that_is_not_a_signal_is_refused(mec, cluster4):
    with pytest.raises(ValueError, match="4242 is not a signal number"):
        mec.send_signal(4242)
    rc = ipp.Client(cluster4.furl_file("client"))
    try:
        with pytest.raises(ValueError, match="4242 is not a signal number"):
            rc.send_signal(4242)
    finally:
        rc.close()
    assert mec.get_ids() == [0, 1, 2, 3]


def slow_the_first_time(marker):
    import os
    import time

    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(60)  # past the time limit: interrupted
    return "in time"


def test_a_kernel_task_past_its_time_limit_fails_with_task_timeout(cluster4):
    tc = cluster4.tc()
    late = tc.run(client.StringTask("import time; time.sleep(60)", time_limit=0.5))
    result = tc.get_task_result(late, block=True)
    assert result.failure.ename == "TaskTimeout"
    assert "ran past its time limit of 0.5 s" in str(result.failure)
    with pytest.raises(ipp.error.TaskTimeout):  # the original exception, as for any failure
        result.failure.raise_exception()
    quick = tc.run(client.StringTask("v = 1", pull="v", time_limit=30))
    assert tc.get_task_result(quick, block=True).ns.v == 1
    assert cluster4.mec().get_ids() == [0, 1, 2, 3]


def test_a_task_past_its_time_limit_runs_again_elsewhere_with_retries(cluster4, tmp_path):
    rc = ipp.Client(cluster4.furl_file("client"))
    try:
        lview = rc.load_balanced_view()
        with lview.temp_flags(time_limit=1, retries=1):
            ar = lview.apply_async(slow_the_first_time, str(tmp_path / "marker"))
        assert ar.get(timeout=60) == "in time"
        with lview.temp_flags(time_limit=0.5):
            late = lview.apply_async(time_sleep, 60)
        with pytest.raises(ipp.error.RemoteError) as info:
            late.get(timeout=60)
        assert info.value.ename == "TaskTimeout"
        assert rc.ids == [0, 1, 2, 3]
    finally:
        rc.close()


def time_sleep(seconds):
    import time

    time.sleep(seconds)


@pytest.mark.parametrize("limit", [-1, "10", float("inf"), True])
def test_a_bad_time_limit_is_refused(cluster4, limit):
    tc = cluster4.tc()
    with pytest.raises(ValueError, match="time_limit must be a number of seconds > 0"):
        tc.run(client.StringTask("pass", time_limit=limit))


def test_aborting_a_running_task_interrupts_it_and_frees_its_engine(cluster4, tmp_path):
    rc = ipp.Client(cluster4.furl_file("client"))
    try:
        only_two = rc.load_balanced_view(targets=[2])
        sig = Signal(tmp_path)
        ar = only_two.apply_async(sig.hanger())
        running_pid(sig)
        ar.abort()
        with pytest.raises(ipp.error.TaskAborted):
            ar.get(timeout=30)
        # the engine is free at once, not after the 120 s the task would have slept
        assert only_two.apply_async(lambda: "next").get(timeout=30) == "next"
        assert rc[2].apply_sync(lambda: "still there") == "still there"
    finally:
        rc.close()


def test_aborting_a_running_kernel_task_interrupts_it(cluster4, tmp_path):
    tc = cluster4.tc()
    sig = Signal(tmp_path)
    taskid = tc.run(client.StringTask(sig.code))
    running_pid(sig)
    tc.abort(taskid)
    result = tc.get_task_result(taskid, block=True)
    assert result.status == "aborted"
    tc.barrier([tc.run(client.StringTask("pass")) for _ in range(8)])  # every engine free
