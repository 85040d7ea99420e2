"""Engines as a Slurm job, on real Slurm daemons (see support.slurm)."""

from __future__ import annotations

import json
import sys
import time

import cloudpickle
import pytest

import plait.parallel as ipp
from plait.cluster.state import read_state
from plait.security import profile_dirs
from plait.wire.errors import ClusterError
from support.cluster import killed_job_shows_as_lost_engines, make_env, run_cmd
from support.slurm import Slurm, unavailable

cloudpickle.register_pickle_by_value(sys.modules[__name__])
WHY = unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    with Slurm(tmp_path_factory.mktemp("slurm")) as daemons:
        yield daemons


def job_of_engine():
    import os

    return os.environ["SLURM_JOB_ID"]


def gone(slurm, job: str, within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while slurm.job_state(job) not in ("", "CANCELLED", "COMPLETED"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # Slurm tells nobody: its queue is asked
    return True


def test_a_slurm_job_of_engines_runs_and_stop_cancels_it(slurm, plait_dir):
    cluster = ipp.Cluster(n=3, engines="slurm", partition="debug", walltime="00:10:00")
    try:
        rc = cluster.start_and_connect()
        assert rc.ids == [0, 1, 2]
        [job] = {g.job for g in cluster._procs.engine_sets}
        assert rc[:].apply_sync(job_of_engine) == [job] * 3
        assert slurm.job_state(job) == "RUNNING"
        assert rc.load_balanced_view().map_sync(lambda x: 2 * x, range(30)) == [
            2 * x for x in range(30)]
    finally:
        cluster.stop()
    assert gone(slurm, job)
    assert read_state(profile_dirs(None)) is None


def test_a_job_the_scheduler_cancels_shows_as_lost_engines_not_a_hang(slurm, plait_dir):
    killed_job_shows_as_lost_engines("slurm", ["scancel"])


def test_sbatch_refusing_the_job_is_a_clear_error_and_nothing_runs(slurm, plait_dir):
    cluster = ipp.Cluster(n=1, engines="slurm", partition="nope")
    with pytest.raises(ClusterError, match="sbatch refused the engines' job: .*invalid "
                                           "partition"):
        cluster.start()
    assert read_state(profile_dirs(None)) is None and not cluster.running


def test_ipcluster_starts_and_stops_slurm_engines(slurm, tmp_path):
    env = make_env(tmp_path / "p")
    out = run_cmd(["ipcluster", "start", "-n", "2", "--engines=slurm", "--partition=debug",
                   "--daemonize"], env, timeout=120)
    try:
        assert "controller and 2 engines [0, 1]" in out.stdout
        listed = run_cmd(["ipcluster", "list"], env)
        assert "slurm" in listed.stdout
        state = (tmp_path / "p" / "profile_default" / "run" / "ipcluster.json").read_text()
        [job] = [g["job"] for g in json.loads(state)["engine_sets"]]
        assert slurm.job_state(job) == "RUNNING"
        run_cmd(["ipcluster", "stop"], env)
        assert gone(slurm, job)
    finally:  # whatever failed above, nothing of the cluster stays
        run_cmd(["ipcluster", "stop"], env, check=False)


def node_of_engine():
    import os

    return os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")


def test_the_controller_runs_in_the_allocation_of_its_engines(slurm, plait_dir):
    cluster = ipp.Cluster(n=3, engines="slurm", controller="slurm", ip="127.0.0.1",
                          partition="debug")
    try:
        rc = cluster.start_and_connect()
        assert rc.ids == [0, 1, 2]
        [job] = {g.job for g in cluster._procs.engine_sets}
        assert cluster._procs.where_controller() == f"in Slurm job {job}"
        steps = rc[:].apply_sync(node_of_engine)
        assert {s[0] for s in steps} == {job} and None not in {s[1] for s in steps}
        # the controller is a process of that job, not of this one
        state = json.loads((profile_dirs(None).run / "ipcluster.json").read_text())
        assert state["controller"] is None and state["allocation"]["job"] == job
        found = ipp.Cluster.from_profile()
        assert found.running and found.engine_ids == [0, 1, 2]
        with pytest.raises(ClusterError, match="stop with the cluster"):
            cluster.stop_engines([0])
        assert rc.load_balanced_view().map_sync(lambda x: x + 10, range(9)) == list(range(10, 19))
    finally:
        cluster.stop()
    assert gone(slurm, job)
    assert read_state(profile_dirs(None)) is None and not cluster.running


def test_an_allocation_whose_controller_fails_says_so_and_nothing_runs(slurm, plait_dir):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cluster = ipp.Cluster(n=1, engines="slurm", controller="slurm", ip="127.0.0.1",
                              client_port=taken.getsockname()[1], timeout=60)
        try:
            with pytest.raises(ClusterError, match=r"(?s)ended \(.*\) before its controller "
                                                   r"was ready.*Address already in use"):
                cluster.start()
        finally:
            cluster.stop()
    assert read_state(profile_dirs(None)) is None and not cluster.running


def test_ipcluster_runs_the_controller_in_the_slurm_job(slurm, tmp_path):
    env = make_env(tmp_path / "p")
    out = run_cmd(["ipcluster", "start", "-n", "2", "--engines=slurm", "--controller=slurm",
                   "--ip=127.0.0.1", "--daemonize"], env, timeout=120)
    try:
        assert "controller and 2 engines [0, 1]" in out.stdout
        listed = run_cmd(["ipcluster", "list"], env)
        assert "job " in listed.stdout and "slurm" in listed.stdout
        state = json.loads((tmp_path / "p" / "profile_default" / "run" / "ipcluster.json")
                           .read_text())
        job = state["allocation"]["job"]
        assert slurm.job_state(job) == "RUNNING"
        run_cmd(["ipcluster", "stop"], env)
        assert gone(slurm, job)
    finally:
        run_cmd(["ipcluster", "stop"], env, check=False)
