"""Engines that die are replaced (``Cluster(restart_engines=True)``, ``ipcluster
start --restart-engines``): the fork server that made them keeps watching, and a
new engine takes the id of the one that died; declared setup code
(``rc.setup`` / ``mec.setup``) runs on it before anything else."""

from __future__ import annotations

import os
import signal
import sys
import time

import cloudpickle
import pytest

import plait.parallel as ipp
from plait.kernel import client
from plait.wire.errors import ClusterError
from support.cluster import engine_pid as pid_of
from support.cluster import make_env, processes_of, run_cmd, wait_exit

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_a_killed_engine_is_replaced_under_its_id_with_the_setup_code(plait_dir):
    cluster = ipp.Cluster(n=2, restart_engines=True)
    try:
        rc = cluster.start_and_connect()
        assert rc.setup("import math\nC = 42") == [0, 1]
        rc[:].push({"scratch": "lost with its engine"}, block=True)
        old = pid_of(rc, 1)
        os.kill(old, signal.SIGKILL)
        assert wait_exit(old, 10)
        new = pid_of(rc, 1, than=old)
        assert rc.ids == [0, 1] and cluster.engine_ids == [0, 1]
        assert rc[1].pull(["C", "math"], block=True)[0] == 42  # the setup code ran on it
        rc[1].execute("had_scratch = 'scratch' in dir()", block=True)
        assert rc[1].pull("had_scratch", block=True) is False  # a new namespace
        assert rc[0].pull("scratch", block=True) == "lost with its engine"  # 0 untouched
        # and again: it is watched as the first one was
        os.kill(new, signal.SIGKILL)
        pid_of(rc, 1, than=new)
        # the kernel generation sees the same engines, and setup code too
        mec = client.MultiEngineClient()
        mec.setup("D = 7")
        newest = pid_of(rc, 0)
        os.kill(newest, signal.SIGKILL)
        pid_of(rc, 0, than=newest)
        assert mec.pull("D", targets=0) == [7] and mec.pull("C", targets=0) == [42]
    finally:
        cluster.stop()
    assert processes_of(plait_dir) == []  # the fork server and what it restarted stopped


def test_an_engine_replaced_while_its_controller_is_away_joins_once_it_is_back(plait_dir):
    """An engine and the controller die together (an OOM killer, a chaos test)
    and the controller is slow to come back: the replacement keeps trying to join,
    as a lost engine does, instead of dying before it registered until its fork
    server gives up on it (which left one engine missing for good)."""
    from plait.cluster.state import read_state
    from plait.security import profile_dirs

    cluster = ipp.Cluster(n=2, restart_engines=True)
    try:
        rc = cluster.start_and_connect()
        pids = rc[:].apply_sync(os.getpid)
        state = read_state(profile_dirs(None))
        assert state is not None
        logs = profile_dirs(None).log
        before = set(logs.glob("ipengine-*.log"))
        os.kill(state["keeper"], signal.SIGSTOP)  # the controller stays away meanwhile
        try:
            os.kill(state["controller"], signal.SIGKILL)
            assert wait_exit(state["controller"], 10)
            os.kill(pids[1], signal.SIGKILL)

            def replacement_waits() -> bool:
                return any("engine 1 keeps trying to join" in log.read_text()
                           for log in set(logs.glob("ipengine-*.log")) - before)

            deadline = time.monotonic() + 30
            while not replacement_waits():
                assert time.monotonic() < deadline, "no replacement engine waits to join"
                time.sleep(0.05)
        finally:
            os.kill(state["keeper"], signal.SIGCONT)  # now it starts the controller again
        rc.wait_for_engines(2, timeout=60)
        assert rc.ids == [0, 1]
        new = rc[:].apply_sync(os.getpid)
        assert new[0] == pids[0] and new[1] not in pids  # 0 rejoined; 1 is the replacement
    finally:
        cluster.stop()
    assert processes_of(plait_dir) == []


def test_engines_that_restart_stop_together_and_are_not_signalled_by_pid(plait_dir):
    cluster = ipp.Cluster(n=2, restart_engines=True)
    try:
        cluster.start()
        with pytest.raises(ClusterError, match="stop together"):
            cluster.stop_engines([1])
        with pytest.raises(ClusterError, match="signal them through the controller"):
            cluster.signal_engines(signal.SIGINT)
    finally:
        cluster.stop()
    assert processes_of(plait_dir) == []


def test_restart_engines_is_for_engines_a_fork_server_of_their_host_makes(plait_dir):
    for engines in ("mpi", "slurm"):
        with pytest.raises(ClusterError, match="restart_engines is for local and SSH engines"):
            ipp.Cluster(n=2, engines=engines, restart_engines=True)


def test_ipcluster_restart_engines(tmp_path):
    env = make_env(tmp_path / "p")
    run_cmd(["ipcluster", "start", "-n", "2", "--restart-engines", "--daemonize"], env,
            timeout=120)
    try:
        rc = ipp.Client(str(tmp_path / "p" / "profile_default" / "security" /
                            "ipcontroller-client.furl"))
        old = pid_of(rc, 0)
        os.kill(old, signal.SIGKILL)
        pid_of(rc, 0, than=old)
        assert rc.ids == [0, 1]
        rc.close()
        run_cmd(["ipcluster", "stop"], env)
        assert processes_of(tmp_path / "p") == []
    finally:
        run_cmd(["ipcluster", "stop"], env, check=False)


def hog(megabytes):
    import time

    block = b"x" * (megabytes << 20)  # written, so resident
    time.sleep(60)
    return len(block)


def test_an_engine_over_its_memory_limit_is_restarted_and_its_task_says_why(plait_dir):
    cluster = ipp.Cluster(n=2, restart_engines=True, engine_memory_limit=300)
    try:
        rc = cluster.start_and_connect()
        ar = rc[1].apply_async(hog, 600)
        with pytest.raises(ipp.error.RemoteError) as info:
            ar.get(timeout=60)
        message = str(info.value)
        assert info.value.ename == "EngineError"
        assert "over its memory limit of 300 MB" in message and "engine 1 used" in message
        pid_of(rc, 1)  # replaced, under its id
        assert rc.ids == [0, 1]
        assert rc[1].apply_sync(abs, -5) == 5  # the new engine works
    finally:
        cluster.stop()
    assert processes_of(plait_dir) == []


def test_a_bad_memory_limit_is_refused(plait_dir):
    with pytest.raises(ClusterError, match="engine_memory_limit must be a number > 0"):
        ipp.Cluster(n=1, engine_memory_limit=-5)
