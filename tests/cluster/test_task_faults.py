"""Tasks on engines that die, and the scheduler options of ipcontroller / ipcluster.

An engine is killed (SIGKILL) while a task runs on it.  The task tells the
test it is running, and on which process, through a named pipe
(:class:`Signal`), so nothing here depends on timing.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import cloudpickle
import pytest

from plait.kernel import client
from support.cluster import Signal, run_cmd

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def on(engine_id):
    """A depend keeping a task on one engine (properties set by the test)."""
    return lambda properties: properties.get("name") == engine_id


def test_dead_engine_fails_its_task_with_an_engine_error_within_seconds(cluster_factory,
                                                                      tmp_path):
    c = cluster_factory(2)
    tc = c.tc()
    sig = Signal(tmp_path)
    taskid = tc.run(client.StringTask(sig.code))
    killed_at = sig.kill_engine()
    tc.barrier(taskid)  # never hangs on a dead engine
    assert time.monotonic() - killed_at < 5
    result = tc.get_task_result(taskid)
    assert result.status == "failed"
    assert result.failure.ename == "EngineError"
    assert f"engine {result.engineid}" in result.failure.evalue
    with pytest.raises(client.EngineError):
        result.raise_exception()
    # the other engine goes on
    assert tc.get_task_result(tc.run(client.StringTask("a = 1", pull="a")),
                              block=True).ns.a == 1


def test_a_task_whose_engine_died_is_retried_elsewhere(cluster_factory, tmp_path):
    c = cluster_factory(2)
    tc = c.tc()
    sig = Signal(tmp_path)
    code = (f"import os\n"
            f"if not os.path.exists({str(tmp_path / 'once')!r}):\n"
            f"    open({str(tmp_path / 'once')!r}, 'w').close()\n"
            + "".join(f"    {line}\n" for line in sig.code.splitlines())
            + "pid = os.getpid()")
    taskid = tc.run(client.StringTask(code, pull="pid", retries=1))
    sig.kill_engine()
    result = tc.get_task_result(taskid, block=True)
    assert result.status == "succeeded" and result.attempts == 2
    assert len(result.failed_on) == 1 and result.engineid != result.failed_on[0]


def test_tasks_queued_behind_the_running_one_are_run_again_for_free(cluster_factory,
                                                                   tmp_path):
    c = cluster_factory(2, extra=["--hwm=2"])
    tc, mec = c.tc(), c.mec()
    mec.set_properties({"name": 0}, targets=0)
    sig = Signal(tmp_path)
    running = tc.run(client.StringTask(sig.code, depend=on(0)))
    behind = tc.run(client.StringTask("b = 2", pull="b", depend=on(0)))
    assert tc.queue_status(verbose=True)["pending"][-2:] == [running, behind]
    sig.kill_engine()
    assert tc.get_task_result(running, block=True).failure.ename == "EngineError"
    assert behind in tc.queue_status(verbose=True)["scheduled"]  # not failed: never ran
    mec.set_properties({"name": 0}, targets=1)
    result = tc.get_task_result(behind, block=True)
    assert result.ns.b == 2 and result.engineid == 1 and result.failed_on == []


def test_nothing_is_lost_when_an_engine_dies(cluster_factory, tmp_path):
    c = cluster_factory(3)
    tc = c.tc()
    sig = Signal(tmp_path)
    doomed = tc.run(client.StringTask(sig.code))
    ids = [tc.run(client.MapTask(time.sleep, args=(0.002,), retries=1)) for _ in range(300)]
    sig.kill_engine()
    tc.barrier([doomed, *ids])
    status = tc.queue_status(verbose=True)
    assert sorted(status["succeeded"]) == ids
    assert status["failed"] == [doomed]
    assert status["scheduled"] == status["pending"] == status["aborted"] == []


def test_a_task_that_kills_its_engines_uses_up_its_retries(cluster_factory):
    c = cluster_factory(3)
    tc = c.tc()
    taskid = tc.run(client.StringTask("import os; os.kill(os.getpid(), 9)", retries=1))
    result = tc.get_task_result(taskid, block=True)
    assert result.status == "failed" and result.failure.ename == "EngineError"
    assert result.attempts == 2 and len(set(result.failed_on)) == 2
    assert len(c.mec().get_ids()) == 1


# -- scheduler options ---------------------------------------------------------------------------
def test_scheme_and_hwm_options_reach_the_scheduler(cluster_factory):
    c = cluster_factory(2, extra=["--scheme=lru", "--hwm=1"])
    tc = c.tc()
    assert tc.info() == {"scheme": "lru", "hwm": 1, "engines": 2, "marks": {0: 1, 1: 1}}
    engines = []
    for _ in range(4):
        engines.append(tc.get_task_result(tc.run(client.StringTask("x = 1")),
                                          block=True).engineid)
    assert engines in ([0, 1, 0, 1], [1, 0, 1, 0])  # least recently used: round robin


def test_default_scheduler_is_leastload_with_an_adaptive_mark(cluster_factory):
    c = cluster_factory(1)
    info = c.tc().info()
    assert (info["scheme"], info["hwm"], info["engines"]) == ("leastload", None, 1)


def test_an_unknown_scheme_is_refused_with_the_valid_ones(tmp_path):
    from support.cluster import make_env

    env = make_env(tmp_path / "plait")
    proc = run_cmd(["ipcontroller", "--scheme=fastest"], env, check=False, timeout=30)
    assert proc.returncode != 0
    assert "unknown scheduler scheme 'fastest'" in proc.stderr
    for name in ("lru", "plainrandom", "twobin", "leastload", "weighted"):
        assert name in proc.stderr


def test_a_scheme_of_ones_own_by_module_path(cluster_factory, tmp_path, monkeypatch):
    (tmp_path / "my_schemes.py").write_text(
        "def highest(slots, rng):\n"
        "    return max(slots, key=lambda slot: slot.engine_id)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    c = cluster_factory(2, extra=["--scheme=my_schemes:highest", "--hwm=1"])
    tc = c.tc()
    assert tc.info()["scheme"] == "my_schemes:highest"
    engines = {tc.get_task_result(tc.run(client.StringTask("x = 1")), block=True).engineid
               for _ in range(4)}
    assert engines == {1}


def test_a_lost_controller_is_reported_clearly(cluster_factory):
    c = cluster_factory(1, extra=["--no-restart-controller"])
    tc = c.tc()
    tc.barrier(tc.run(client.StringTask("x = 1")))
    os.kill(c.state()["controller"], signal.SIGKILL)
    with pytest.raises(client.PlaitError, match="controller"):
        taskid = tc.run(client.StringTask("x = 2"))
        tc.get_task_result(taskid, block=True)
