"""Both API generations on one controller: what one does, the other sees.

A ``mec.push`` is pulled by a DirectView, a TaskClient and a
LoadBalancedView share one scheduler in the order their tasks arrive, an
engine killed under both fails or retries what it held in both, and
engines that die or join are seen by the later generation's clients.
"""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

import plait.parallel as ipp
from plait.kernel import client
from plait.parallel import error
from support.cluster import Gate, Signal

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def engine_pid():
    import os

    return os.getpid()


@pytest.fixture(scope="module")
def rc(cluster4):
    with cluster4.rc() as c:
        yield c


def test_namespaces_are_shared(cluster4, rc):
    mec = cluster4.mec()
    mec.reset()
    mec.push(dict(a=1.5))
    assert rc[:].pull("a", block=True) == [1.5] * 4
    rc[:].push(dict(b="from the view"), block=True)
    assert mec.pull("b") == ["from the view"] * 4
    rc[::2].execute("c = 3", block=True)
    assert mec.pull("c", targets=[0, 2]) == [3, 3]


def test_errors_are_one_hierarchy(cluster4, rc):
    mec = cluster4.mec()
    with pytest.raises(ipp.CompositeError) as from_view:
        rc[:].execute("1/0", block=True)
    with pytest.raises(client.CompositeError) as from_mec:
        mec.execute("1/0")
    assert type(from_view.value) is type(from_mec.value)
    assert error.RemoteError is client.RemoteError


def test_a_task_client_and_a_view_share_the_scheduler_first_come_first_served(
        cluster_factory, tmp_path):
    c = cluster_factory(1)
    tc = c.tc()
    with c.rc() as rc:
        lview = rc.load_balanced_view()
        gate = Gate(tmp_path)
        held = lview.apply_async(gate.waiter())  # the one engine is busy
        held.wait_for_send()
        # (each client sends what it submitted in batches: make sure each batch
        # reached the controller before the next one is submitted)
        log = str(tmp_path / "log")

        def note(label):
            with open(log, "a") as f:
                f.write(label + "\n")

        first = [tc.run(client.MapTask(note, args=("tc",))) for _ in range(5)]
        tc.wait_for_send()
        middle = [lview.apply_async(note, "lv") for _ in range(5)]
        middle[-1].wait_for_send()
        last = [tc.run(client.MapTask(note, args=("tc",))) for _ in range(5)]
        gate.open()
        assert held.get() == "go"
        tc.barrier(first + last)
        rc.wait(middle)
        # the engine ran them in the order they reached the controller
        with open(log) as f:
            assert f.read().split() == ["tc"] * 5 + ["lv"] * 5 + ["tc"] * 5


def test_a_killed_engine_fails_what_it_held_for_both_generations(cluster_factory, tmp_path):
    c = cluster_factory(2)
    tc = c.tc()
    with c.rc() as rc:
        pids = dict(zip(rc[:].apply_sync(engine_pid), rc.ids, strict=True))
        sig = Signal(tmp_path)
        doomed = tc.run(client.StringTask(sig.code))
        with open(sig.path) as f:
            pid = int(f.read())
        engine = pids[pid]
        behind = rc[engine].apply_async(engine_pid)  # queued behind, on that engine
        behind.wait_for_send()
        os.kill(pid, 9)
        result = tc.get_task_result(doomed, block=True)
        assert result.failure.ename == "EngineError"
        with pytest.raises(error.RemoteError) as info:
            behind.get(timeout=30)
        assert info.value.ename == "EngineError"
        assert f"engine {engine}" in info.value.evalue
        rc.wait_for_engines(1)
        assert rc.ids == [1 - engine]
        survivor = rc.load_balanced_view().apply_sync(engine_pid)
        assert survivor != pid


def test_a_balanced_task_whose_engine_died_is_retried_elsewhere(cluster_factory, tmp_path):
    c = cluster_factory(2)
    with c.rc() as rc:
        sig = Signal(tmp_path)
        marker = str(tmp_path / "once")
        hang = sig.hanger()

        def first_time_hang():
            import os

            if not os.path.exists(marker):
                open(marker, "w").close()
                hang()
            return os.getpid()

        lview = rc.load_balanced_view()
        with lview.temp_flags(retries=1):
            ar = lview.apply_async(first_time_hang)
        sig.kill_engine()
        pid = ar.get(timeout=30)
        assert pid > 0
        assert ar.engine_id in rc.ids
        # without retries the engine's death is the task's failure
        sig2 = Signal(tmp_path, "again")
        ar2 = lview.apply_async(sig2.hanger())
        sig2.kill_engine()
        with pytest.raises(error.RemoteError) as info:
            ar2.get(timeout=30)
        assert info.value.ename == "EngineError"


def test_a_direct_view_on_a_gone_engine_says_so(cluster_factory, tmp_path):
    c = cluster_factory(2)
    with c.rc() as rc:
        view = rc[1]
        sig = Signal(tmp_path)
        running = view.apply_async(sig.hanger())
        sig.kill_engine()
        with pytest.raises(error.RemoteError, match="EngineError"):
            running.get(timeout=30)
        assert rc.ids == [0]
        with pytest.raises(error.InvalidEngineID, match="no engine with id 1"):
            view.apply_sync(engine_pid)
        assert rc[0].apply_sync(lambda: "alive") == "alive"


def test_engines_that_join_are_seen(cluster_factory):
    import subprocess

    c = cluster_factory(1)
    with c.rc() as rc:
        assert rc.ids == [0]
        engine = subprocess.Popen([sys.executable, "-m", "plait.scripts.ipengine",
                                   f"--profile={c.profile}", c.enroll_flag()], env=c.env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            rc.wait_for_engines(2, timeout=30)
            assert rc.ids == [0, 1]
            assert rc[1].apply_sync(lambda: 1) == 1
        finally:
            engine.kill()
            engine.wait()
