"""A controller that dies comes back: its keeper starts it again on the same
ports and FURLs, engines rejoin with their ids and namespaces, clients
reconnect on their next call, and the hub's records are still there."""

from __future__ import annotations

import os
import signal
import time

import pytest

import plait.parallel as ipp
from plait.kernel import client
from tests.support.cluster import run_cmd, wait_exit


def _kill_controller(c) -> int:
    pid = c.state()["controller"]
    os.kill(pid, signal.SIGKILL)
    assert wait_exit(pid, 10)
    return pid


def _furls(c) -> dict[str, str]:
    return {p.name: p.read_text() for p in c.security.glob("*.furl")}


def test_a_killed_controller_comes_back_with_its_engines_and_clients(cluster_factory):
    c = cluster_factory(2)
    rc, mec, tc = c.rc(), c.mec(), c.tc()
    rc[:]["a"] = 5
    ar = rc[:].apply_async(os.getpid)
    pids = ar.get(timeout=30)
    rc.db_query({"msg_id": {"$in": ar.msg_ids}}, keys=["msg_id"])  # (answered once kept)
    furls = _furls(c)
    old = _kill_controller(c)

    # the next calls of clients made before the kill reconnect, and find the engines
    # with their ids and namespaces
    rc.wait_for_engines(2, timeout=30)
    assert rc.ids == [0, 1]
    assert rc[:]["a"] == [5, 5]
    assert rc[:].apply_sync(os.getpid) == pids  # the same processes
    assert mec.pull("a") == [5, 5]
    taskid = tc.run(client.StringTask("b = a + 1", pull="b"))
    assert tc.get_task_result(taskid, block=True).ns.b == 6
    # the hub kept the records of the last run
    assert rc.get_result(ar.msg_ids).get(timeout=30) == pids
    assert rc.load_balanced_view().apply_sync(lambda: 7) == 7
    # the same FURLs; a new process, written in the cluster's state
    assert _furls(c) == furls
    assert c.state()["controller"] != old
    # a new client finds it as the first did
    assert c.rc().ids == [0, 1]
    log = (c.plait_dir / "profile_default" / "log" / "ipcluster-keeper.log").read_text()
    assert f"the controller (pid {old}) died: starting it again" in log


def test_a_call_in_flight_fails_clearly_and_the_next_one_works(cluster_factory, tmp_path):
    import threading

    c = cluster_factory(2)
    mec, rc = c.mec(), c.rc()
    started = tmp_path / "started"
    os.mkfifo(started)
    failed: list[BaseException] = []

    def call() -> None:
        try:
            mec.execute(f"open({str(started)!r}, 'w').close()\nimport time\ntime.sleep(2)",
                        targets=1)
        except BaseException as exc:
            failed.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    with open(started) as fifo:  # (returns once the engine runs the command)
        fifo.read()
    _kill_controller(c)
    caller.join(60)
    assert len(failed) == 1 and isinstance(failed[0], client.PlaitConnectionError)
    assert "lost the connection to the controller" in str(failed[0])
    assert "during this call" in str(failed[0])
    rc.wait_for_engines(2, timeout=30)  # the engine that slept rejoins once done
    assert mec.execute("x = 1") and rc[:].apply_sync(lambda: 1) == [1, 1]


def test_a_controller_stopped_on_request_is_not_started_again(cluster_factory):
    c = cluster_factory(1)
    state = c.state()
    c.mec().kill(controller=True)
    assert wait_exit(state["controller"], 10)
    assert wait_exit(state["keeper"], 10)  # it saw a clean stop: it ends too
    listed = run_cmd(["ipcluster", "list"], c.env)
    assert "default" not in listed.stdout


def test_ipcluster_stop_stops_the_keeper_first(cluster_factory):
    c = cluster_factory(1)
    state = c.state()
    rc = c.rc()
    _kill_controller(c)
    rc.wait_for_engines(1, timeout=30)
    new = c.state()["controller"]
    run_cmd(["ipcluster", "stop"], c.env)
    for pid in (state["keeper"], new, *state["engines"]):
        assert wait_exit(pid, 10)


def test_without_a_keeper_the_client_names_the_profile_and_the_log(cluster_factory):
    c = cluster_factory(1, extra=["--no-restart-controller"])
    rc = c.rc()
    rc[:].apply_sync(lambda: 1)
    pid = _kill_controller(c)
    with pytest.raises(ipp.error.PlaitConnectionError) as info:
        for _ in range(50):  # the first call may already be in flight when the socket closes
            rc.queue_status()
    text = str(info.value)
    assert "could not connect again" in text or "lost the connection" in text
    with pytest.raises(ipp.error.PlaitConnectionError) as info:
        rc.queue_status()
    assert "profile 'default'" in str(info.value)
    assert f"ipcontroller-{pid}.log" in str(info.value)


def test_ipcontroller_started_again_takes_its_ports_and_furls_again(tmp_path, monkeypatch):
    import json
    import socket

    from plait.cluster.launchers import read_ready, spawn_controller
    from plait.security import profile_dirs

    monkeypatch.setenv("PLAIT_DIR", str(tmp_path))
    dirs = profile_dirs(None)

    def started() -> object:
        proc, fd = spawn_controller(None, [], detach=True)
        read_ready(fd, proc, time.monotonic() + 60, dirs)
        return proc

    def stopped(proc) -> None:
        proc.terminate()
        assert proc.wait(30) == 0

    proc = started()
    furls = {p.name: p.read_text() for p in dirs.security.glob("*.furl")}
    ports = json.loads((dirs.db / "ports.json").read_text())
    assert set(ports) >= {"client", "engine"}
    stopped(proc)
    proc = started()
    assert {p.name: p.read_text() for p in dirs.security.glob("*.furl")} == furls
    stopped(proc)
    # the client port of the last run is taken now: another one, and the log says so
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["client"]))
        squatter.listen()
        proc = started()
        now = {p.name: p.read_text() for p in dirs.security.glob("*.furl")}
        stopped(proc)
    assert now["ipcontroller-engine.furl"] == furls["ipcontroller-engine.furl"]
    assert now["ipcontroller-client.furl"] != furls["ipcontroller-client.furl"]
    log = (dirs.log / f"ipcontroller-{proc.pid}.log").read_text()
    assert f"the client port of the last run, {ports['client']}, is taken now" in log


def test_tasks_queued_or_running_when_the_controller_dies_run_and_their_results_come(
        cluster_factory):
    c = cluster_factory(2)
    rc, tc = c.rc(), c.tc()
    view = rc.load_balanced_view()
    running = [view.apply_async(time.sleep, 1) for _ in range(2)]  # both engines busy
    queued = view.map_async(lambda x: x * x, range(20), chunksize=1)
    pinned = rc[1].apply_async(lambda: "pinned")
    kernel = [tc.run(client.StringTask("y = 3", pull="y")) for _ in range(3)]
    tc.wait_for_send()
    for ar in (*running, queued, pinned):
        ar.wait_for_send()
    msg_ids = [m for ar in (*running, queued, pinned) for m in ar.msg_ids]
    status = rc.result_status(msg_ids)  # (the hub answers once it has kept them all)
    assert len(status["pending"]) + len(status["completed"]) == len(msg_ids)
    _kill_controller(c)
    # the results come, with nothing more to do than wait for them: the tasks that
    # ran when the controller died run again
    assert queued.get(timeout=60) == [x * x for x in range(20)]
    assert [ar.get(timeout=60) for ar in running] == [None, None]
    assert pinned.get(timeout=60) == "pinned" and pinned.engine_id == 1
    results = []
    for taskid in kernel:
        try:
            results.append(tc.get_task_result(taskid, block=True).ns.y)
        except client.PlaitConnectionError:  # the first call meets the link going
            results.append(tc.get_task_result(taskid, block=True).ns.y)
    assert results == [3, 3, 3]
    log = next((c.plait_dir / "profile_default" / "log").glob("ipcontroller-*.log"))
    texts = [p.read_text() for p in log.parent.glob("ipcontroller-*.log")]
    assert any("taking back" in t for t in texts)


def test_a_clean_stop_leaves_nothing_to_take_back(cluster_factory):
    import sqlite3

    c = cluster_factory(1)
    rc = c.rc()
    rc.load_balanced_view().apply_async(time.sleep, 30)
    rc.result_status(rc.history)
    c.stop()
    db = sqlite3.connect(c.plait_dir / "profile_default" / "db" / "hub.sqlite3")
    try:
        assert db.execute("SELECT count(*) FROM queued").fetchone() == (0,)
    finally:
        db.close()


def test_a_task_that_finishes_while_the_controller_is_down_is_not_run_again(
        cluster_factory, tmp_path):
    """Its engine keeps the reply the dead controller never got, and tells the
    controller started again, which takes the task back finished."""
    c = cluster_factory(1)
    rc = c.rc()
    started, go, runs = tmp_path / "started", tmp_path / "go", tmp_path / "runs"
    os.mkfifo(started)
    os.mkfifo(go)

    def task(started: str, go: str, runs: str) -> int:
        with open(runs, "a") as f:
            f.write("ran\n")
        open(started, "w").close()  # (returns once the test listens)
        with open(go) as f:  # (returns once the test said go)
            f.read()
        return 42

    ar = rc.load_balanced_view().apply_async(task, str(started), str(go), str(runs))
    ar.wait_for_send()  # acknowledged: kept through the controller's death
    with open(started) as fifo:
        fifo.read()
    _kill_controller(c)
    with open(go, "w") as fifo:  # it finishes now, with no controller to tell
        fifo.write("go")
    assert ar.get(timeout=60) == 42
    assert runs.read_text() == "ran\n"  # once
    [record] = rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["status", "engine_id"])
    assert record["status"] == "succeeded" and record["engine_id"] == 0
    logs = (c.plait_dir / "profile_default" / "log").glob("ipcontroller-*.log")
    assert any("engine 0 reported 1 tasks it finished" in log.read_text() for log in logs)


def test_a_queued_task_with_large_arguments_runs_after_the_controller_died(
        cluster_factory, tmp_path):
    """Arguments over 1 MB travel by the data channel; the hub keeps them on disk
    with the queued task, so that it runs after the restart, and then drops them."""
    import numpy as np

    c = cluster_factory(1)
    rc = c.rc()
    view = rc.load_balanced_view()
    started, go = tmp_path / "started", tmp_path / "go"
    os.mkfifo(started)
    os.mkfifo(go)

    def hold(started: str, go: str) -> str:
        open(started, "w").close()  # (returns once the test listens)
        with open(go) as f:  # (returns once the test said go)
            f.read()
        return "held"

    held = view.apply_async(hold, str(started), str(go))
    with open(started) as fifo:  # the only engine is busy: what follows stays queued
        fifo.read()
    big = np.arange(600_000, dtype=np.float64)  # 4.8 MB
    queued = view.apply_async(lambda a: float(a.sum()), big)
    queued.wait_for_send()  # acknowledged: kept through the controller's death
    kept = c.plait_dir / "profile_default" / "db" / "blobs"
    assert [p.stat().st_size > big.nbytes for p in kept.iterdir()] == [True]
    _kill_controller(c)
    with open(go, "w") as fifo:
        fifo.write("go")
    assert held.get(timeout=60) == "held"
    assert queued.get(timeout=60) == float(big.sum())
    # once it is finished, its arguments are not kept any more
    assert list(kept.iterdir()) == []


def test_a_result_awaited_across_controllers_killed_again_and_again_comes(cluster_factory,
                                                                         tmp_path):
    # (each restart asks the hub for the result again: a question cut off by the next
    # kill is asked once more on the link after it, however many kills come)
    c = cluster_factory(1)
    rc = c.rc()
    started, gate = tmp_path / "started", tmp_path / "gate"
    os.mkfifo(started)
    os.mkfifo(gate)

    def held(started: str, gate: str) -> int:
        open(started, "w").close()
        with open(gate) as fifo:
            return len(fifo.read())

    ar = rc.load_balanced_view().apply_async(held, str(started), str(gate))
    ar.wait_for_send()  # (acknowledged: kept, whatever dies now)
    with open(started) as fifo:  # (returns once the engine runs the task)
        fifo.read()
    for _ in range(3):
        _kill_controller(c)
        rc.queue_status()  # (connected again, to the next one)
        assert not ar.ready(), ar.exception()
    with open(gate, "w") as fifo:
        fifo.write("done")
    assert ar.get(timeout=60) == 4
