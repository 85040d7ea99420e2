"""Engines that die, hang in user code, or lose their controller."""

from __future__ import annotations

import os
import signal
import time

import pytest

from plait.kernel import client
from support.cluster import make_env, run_cmd, wait_exit, wait_for_engines


def _pids(mec) -> list[int]:
    mec.execute("import os; _pid = os.getpid()")
    return mec.pull("_pid")


def test_killed_engine_fails_its_commands_and_leaves_the_registry(cluster_factory):
    c = cluster_factory(3)
    mec = c.mec()
    pids = _pids(mec)
    running = mec.execute("import time; time.sleep(60)", targets=1, block=False)
    queued = mec.execute("y = 1", targets=1, block=False)
    t0 = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    for pr in (running, queued):
        with pytest.raises(client.CompositeError) as info:
            pr.get_result()
        err = info.value
        assert [eid for eid, _, _ in err.elist] == [1]
        assert err.elist[0][2].ename == "EngineError"
        assert "engine 1" in str(err)
        with pytest.raises(client.EngineError):
            err.raise_exception()
    assert time.monotonic() - t0 < 5
    assert mec.get_ids() == [0, 2]
    # the others keep working, and new commands to the dead id are refused clearly
    assert [r["stdout"] for r in mec.execute("print(2)")] == ["2\n", "2\n"]
    with pytest.raises(client.InvalidEngineID, match=r"no engine with id 1; registered engines: \[0, 2\]"):
        mec.execute("x = 1", targets=1)


def test_engine_answers_keepalives_while_user_code_runs(cluster_factory):
    # this controller drops an engine that is silent for 3 s; user code that
    # holds the engine's main thread far longer must not make it silent
    c = cluster_factory(1, extra=["--engine-timeout=3"])
    mec = c.mec()
    r = mec.execute(
        "import time\n"
        "t = time.time()\n"
        "n = 0\n"
        "while time.time() - t < 8:\n"
        "    n += 1\n"
        "print('spun')"
    )
    assert r[0]["stdout"] == "spun\n"
    assert mec.get_ids() == [0]


def test_engines_exit_when_controller_is_killed(cluster_factory):
    # (without a keeper to start it again, and with engines told not to wait for it)
    c = cluster_factory(2, extra=["--no-restart-controller", "--engine-reconnect=0"])
    state = c.state()
    os.kill(state["controller"], signal.SIGKILL)
    assert all(wait_exit(p, 10) for p in state["engines"])


def test_client_reports_a_lost_controller(cluster_factory):
    c = cluster_factory(1, extra=["--no-restart-controller"])
    mec = c.mec()
    os.kill(c.state()["controller"], signal.SIGKILL)
    with pytest.raises(client.PlaitConnectionError, match="lost the connection"):
        for _ in range(50):  # the first call may already be in flight when the socket closes
            mec.get_ids()


def test_engine_without_channel_is_driven_through_foolscap(cluster_factory):
    import subprocess
    import sys

    c = cluster_factory(1)
    extra = subprocess.Popen(
        [sys.executable, "-m", "plait.scripts.ipengine", "--no-channel", c.enroll_flag()],
        env=c.env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        mec = c.mec()
        assert wait_for_engines(mec, 2) == [0, 1]
        mec.execute("import os; pid = os.getpid(); print('hi')")
        r = mec.execute("print(pid == os.getpid())", targets=1)
        assert r[0]["stdout"] == "True\n"
        assert mec.pull("pid", targets=1) == [extra.pid]
        running = mec.execute("import time; time.sleep(60)", targets=1, block=False)
        extra.kill()
        with pytest.raises(client.CompositeError, match="EngineError"):
            running.get_result()
        assert mec.get_ids() == [0]
    finally:
        extra.kill()
        extra.wait()


def test_kill_stops_an_engine_stuck_in_user_code(cluster_factory):
    import time as _time

    c = cluster_factory(2)
    mec = c.mec()
    stuck = mec.execute("import time; time.sleep(120)", targets=1, block=False)
    t0 = _time.monotonic()
    assert mec.kill(targets=1) == [None]
    assert _time.monotonic() - t0 < 10
    with pytest.raises(client.CompositeError, match="EngineError"):
        stuck.get_result()
    assert mec.get_ids() == [0]


@pytest.mark.parametrize("value, message", [("2", "at least 3 seconds"), ("x", "not a whole number")])
def test_engine_timeout_too_short_is_refused(tmp_path, value, message):

    out = run_cmd(["ipcontroller", f"--engine-timeout={value}"], make_env(tmp_path), check=False)
    assert out.returncode == 2 and message in out.stderr
