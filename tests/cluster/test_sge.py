"""Engines as a Grid Engine (SGE) job array, on real Grid Engine daemons (see
support.sge)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import cloudpickle
import pytest

import plait.parallel as ipp
from plait.cluster.state import read_state
from plait.security import profile_dirs
from plait.wire.errors import ClusterError
from support.cluster import killed_job_shows_as_lost_engines, make_env, run_cmd
from support.sge import QUEUE, GridEngine, unavailable

cloudpickle.register_pickle_by_value(sys.modules[__name__])
WHY = unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")


@pytest.fixture(scope="module")
def sge(tmp_path_factory):
    with GridEngine(tmp_path_factory.mktemp("sge")) as daemons:
        yield daemons


def task_of_engine():
    import os

    return os.environ["JOB_ID"], os.environ["SGE_TASK_ID"]


def reaches(sge, job: str, state: str, within: float = 30) -> bool:
    """Whether qstat lists ``job`` in ``state`` ("" once gone) within ``within`` s."""
    deadline = time.monotonic() + within
    while sge.job_state(job) != state:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # Grid Engine tells nobody: its queue is asked
    return True


def gone(sge, job: str) -> bool:
    return reaches(sge, job, "")


def running(sge, job: str) -> bool:
    # an engine may register while qstat still shows its task "t" (being started)
    return reaches(sge, job, "r")


def test_an_sge_job_array_of_engines_runs_and_stop_deletes_it(sge, plait_dir):
    cluster = ipp.Cluster(n=3, engines="sge", partition=QUEUE, walltime="00:10:00")
    try:
        rc = cluster.start_and_connect()
        assert rc.ids == [0, 1, 2]
        [job] = {g.job for g in cluster._procs.engine_sets}
        assert sorted(rc[:].apply_sync(task_of_engine)) == [(job, "1"), (job, "2"),
                                                            (job, "3")]
        assert running(sge, job)
        assert rc.load_balanced_view().map_sync(lambda x: 2 * x, range(30)) == [
            2 * x for x in range(30)]
    finally:
        cluster.stop()
    assert gone(sge, job)
    assert read_state(profile_dirs(None)) is None


def test_a_job_the_scheduler_deletes_shows_as_lost_engines_not_a_hang(sge, plait_dir):
    job = killed_job_shows_as_lost_engines("sge", ["qdel"])
    assert gone(sge, job)


def test_a_job_deleted_while_it_waits_is_an_error_at_once_not_the_timeout(sge, plait_dir):
    held: list[str] = []

    def delete_once_held() -> None:
        deadline = time.monotonic() + 60
        while not held and time.monotonic() < deadline:
            held.extend(j for j, states in sge.jobs().items() if states == ["hqw"])
            time.sleep(0.05)  # the job is submitted by start(), in the other thread
        if held:
            subprocess.run(["qdel", held[0]], capture_output=True)

    cluster = ipp.Cluster(n=2, engines="sge", directives=["-h"], timeout=90)
    deleter = threading.Thread(target=delete_once_held)
    deleter.start()
    began = time.monotonic()
    try:
        with pytest.raises(ClusterError, match=r"job (\d+) ended \(ENDED\) before its engines "
                                               r"registered \(0 of 2 engines are\)") as info:
            cluster.start()
    finally:
        deleter.join()
    assert held and f"job {held[0]} ended" in str(info.value)
    assert time.monotonic() - began < 60  # within a few of batch.JOB_CHECK_EVERY, not 90
    assert read_state(profile_dirs(None)) is None and not cluster.running


def test_a_job_in_the_error_state_is_an_error_quoting_its_reason(sge, plait_dir, tmp_path):
    own = tmp_path / "job.sh"  # an output folder the node does not see
    own.write_text("#!/bin/sh\n#$ -N {name}\n#$ -t 1-{n}\n#$ -o /nonexistent/plait/out\n"
                   "#$ -j y\n#$ -V\n{directives}\n{engine}\n")
    cluster = ipp.Cluster(n=2, engines="sge", template=str(own), timeout=90)
    began = time.monotonic()
    with pytest.raises(ClusterError, match=r"job \d+ ended \(Eqw: error: can't open output "
                                           r"file \"/nonexistent/plait/out\"") as info:
        cluster.start()
    assert time.monotonic() - began < 60
    found = re.search(r"job (\d+) ended", str(info.value))
    assert found and gone(sge, found.group(1))  # the failed start deleted it
    assert read_state(profile_dirs(None)) is None and not cluster.running


def test_qsub_refusing_the_job_is_a_clear_error_and_nothing_runs(sge, plait_dir):
    cluster = ipp.Cluster(n=1, engines="sge", partition="nope")
    with pytest.raises(ClusterError, match="qsub refused the engines' job: .*unknown queue "
                                           "\"nope\""):
        cluster.start()
    assert read_state(profile_dirs(None)) is None and not cluster.running
    assert sge.jobs() == {}


def test_ipcluster_starts_and_stops_sge_engines(sge, tmp_path):
    env = make_env(tmp_path / "p")
    out = run_cmd(["ipcluster", "start", "-n", "2", "--engines=sge", f"--partition={QUEUE}",
                   "--daemonize"], env, timeout=120)
    try:
        assert "controller and 2 engines [0, 1]" in out.stdout
        listed = run_cmd(["ipcluster", "list"], env)
        assert "sge" in listed.stdout
        state = (tmp_path / "p" / "profile_default" / "run" / "ipcluster.json").read_text()
        [job] = [g["job"] for g in json.loads(state)["engine_sets"]]
        assert running(sge, job)
        run_cmd(["ipcluster", "stop"], env)
        assert gone(sge, job)
    finally:  # whatever failed above, nothing of the cluster stays
        run_cmd(["ipcluster", "stop"], env, check=False)
