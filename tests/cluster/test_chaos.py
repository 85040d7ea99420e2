"""Chaos: tasks of both generations go on while engines and the controller are
SIGKILLed, and every one of them ends with its right result, once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import plait.parallel as ipp
from plait.kernel import client
from tests.support.cluster import wait_exit


def _double(i):
    import time

    time.sleep(0.002)
    return 2 * i


#: A second client, in a process of its own: it submits 500 tasks, says their
#: msg_ids once they are acknowledged, then waits for them until it is killed.
_OTHER_CLIENT = """
import json, sys
import plait.parallel as ipp
rc = ipp.Client(sys.argv[1])
view = rc.load_balanced_view()
with view.temp_flags(retries=5):
    ar = view.map_async(ipp.interactive(lambda i: 3 * i), range(500), chunksize=1)
ar.wait_for_send()
print(json.dumps(ar.msg_ids), flush=True)
ar.get()
"""


def _engine_pids(rc) -> list[int]:
    """The pids of the 3 engines, asked until all answer (the one killed last may
    still be registered, or its replacement not be yet)."""
    for _ in range(100):
        rc.wait_for_engines(3, timeout=60)
        try:
            return rc[:].apply_sync(os.getpid)
        except ipp.error.CompositeError:
            continue
    raise AssertionError("the 3 engines did not all answer")


def test_tasks_survive_engines_and_the_controller_killed_at_random(plait_dir):
    rng = random.Random(11)
    n = 2000
    cluster = ipp.Cluster(n=3, restart_engines=True)
    try:
        rc = cluster.start_and_connect()
        tc = client.TaskClient(str(plait_dir / "profile_default" / "security" /
                                   "ipcontroller-tc.furl"))
        view = rc.load_balanced_view()
        with view.temp_flags(retries=5):
            ars = [view.apply_async(ipp.interactive(_double), i) for i in range(n)]
        kernel = [tc.run(client.StringTask(f"y = 3 * {i}", pull="y", retries=5))
                  for i in range(n // 4)]
        other = subprocess.Popen(
            [sys.executable, "-c", _OTHER_CLIENT,
             str(plait_dir / "profile_default" / "security" / "ipcontroller-client.furl")],
            stdout=subprocess.PIPE, text=True)
        # acknowledged: from now on, no controller's death may lose any of them
        tc.wait_for_send()
        ars[-1].wait_for_send()
        assert other.stdout is not None
        others = json.loads(other.stdout.readline())  # (its tasks acknowledged too)
        assert len(others) == 500
        # kills at events: once so many results came, an engine, or the controller
        for after, what in [(200, "engine"), (350, "client"), (500, "controller"),
                            (900, "engine"), (1300, "controller"), (1600, "engine")]:
            ars[after].get(timeout=120)
            if what == "client":  # killed with its tasks unfinished: they finish all the same
                pid = other.pid
            elif what == "controller":
                pid = cluster.controller_pid
            else:
                pid = rng.choice(_engine_pids(rc))
            os.kill(pid, signal.SIGKILL)
            assert wait_exit(pid, 10)
        assert [ar.get(timeout=120) for ar in ars] == [2 * i for i in range(n)]
        values = []
        for taskid in kernel:
            try:
                values.append(tc.get_task_result(taskid, block=True).ns.y)
            except client.PlaitConnectionError:  # (a call the controller's death cut)
                values.append(tc.get_task_result(taskid, block=True).ns.y)
        assert values == [3 * i for i in range(n // 4)]
        # each task has one record in the hub, succeeded
        records = rc.db_query({"msg_id": {"$in": [ar.msg_ids[0] for ar in ars]}},
                              keys=["status"])
        assert len(records) == n and {r["status"] for r in records} == {"succeeded"}
        # the killed client's tasks too: each once, with its right result
        assert other.wait(timeout=10) == -signal.SIGKILL
        chunks = rc.get_result(others).get(timeout=120)  # (a map's: one chunk each)
        assert [x for chunk in chunks for x in chunk] == [3 * i for i in range(500)]
        records = rc.db_query({"msg_id": {"$in": others}}, keys=["status"])
        assert len(records) == 500 and {r["status"] for r in records} == {"succeeded"}
        rc.wait_for_engines(3, timeout=60)
        assert rc.ids == [0, 1, 2]
    finally:
        cluster.stop()
