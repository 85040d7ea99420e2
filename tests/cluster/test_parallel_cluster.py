"""``plait.parallel.Cluster`` and ``AsyncCluster``: clusters started from Python.

Real processes in a fresh PLAIT_DIR per test.  Every process a test starts
carries that PLAIT_DIR in its environment, which is how the teardown (and
the "nothing left running" checks) find them, whatever went wrong.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

import plait.parallel as ipp
from plait.cluster.processes import pid_alive, signal_pids
from plait.parallel import AsyncCluster, Cluster
from plait.security import PARALLEL_FURL, profile_dirs
from plait.wire.errors import ClusterError, PlaitConnectionError
from support.cluster import left_running, make_env, processes_of, run_cmd, wait_exit
from support.mpi import MPI_LAUNCHERS, is_open_mpi

# The engines cannot import this module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- helpers --------------------------------------------------------------------------------
def state_file(plait_dir: Path, profile: str = "default") -> Path:
    return plait_dir / f"profile_{profile}" / "run" / "ipcluster.json"


def until(condition, what: str, timeout: float = 30.0) -> None:
    """Wait for ``condition()``: only for what no event announces (engines gone)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def plait_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's PLAIT_DIR.  At teardown its clusters are stopped (ipcluster stop),
    whatever else still runs from it is killed, and the test errors if anything did."""
    folder = tmp_path / "p"
    monkeypatch.setenv("PLAIT_DIR", str(folder))
    yield folder
    for recorded in folder.glob("profile_*/run/ipcluster.json"):
        profile = recorded.parent.parent.name[len("profile_"):]
        run_cmd(["ipcluster", "stop", f"--profile={profile}"], make_env(folder), check=False)
    leftovers = left_running(folder)
    for pid in leftovers:
        signal_pids([pid], signal.SIGKILL)
    assert not leftovers, f"processes left running: {leftovers}"


@pytest.fixture
def clusters(plait_dir: Path) -> Iterator[list]:
    """Clusters a test appends here are stopped at teardown (before the sweep)."""
    started: list = []
    yield started
    for cluster in started:
        cluster.stop()


# -- with Cluster(...) as rc ------------------------------------------------------------------
def test_with_cluster_gives_a_client_then_stops_everything(plait_dir):
    with Cluster(n=2) as rc:
        assert isinstance(rc, ipp.Client)
        assert rc.ids == [0, 1]
        pids = rc[:].apply_sync(os.getpid)
        assert len(set(pids)) == 2
        state = json.loads(state_file(plait_dir).read_text())
        assert sorted(state["engines"]) == sorted(pids)
        controller = state["controller"]
        assert pid_alive(controller)
    assert not [pid for pid in [controller, *pids] if pid_alive(pid)]
    assert not state_file(plait_dir).exists()
    assert left_running(plait_dir) == []


# -- growing, shrinking, restarting, signalling ---------------------------------------------------
def test_add_and_stop_engines_the_client_follows(plait_dir, clusters):
    cluster = Cluster(n=2)
    clusters.append(cluster)
    assert repr(cluster) == "<Cluster(profile='default', stopped, engines=0 local)>"
    assert not cluster.running
    rc = cluster.start_and_connect()
    assert repr(cluster) == "<Cluster(profile='default', running, engines=2 local)>"
    assert rc.ids == [0, 1]

    assert cluster.add_engines(2) == [2, 3]
    rc.wait_for_engines(4, timeout=30)
    assert rc.ids == [0, 1, 2, 3] and cluster.engine_ids == [0, 1, 2, 3]
    pids = dict(zip(rc.ids, rc[:].apply_sync(os.getpid), strict=True))
    assert len(set(pids.values())) == 4

    cluster.stop_engines([0, 2])
    assert cluster.engine_ids == [1, 3]
    assert not pid_alive(pids[0]) and not pid_alive(pids[2])
    until(lambda: rc.ids == [1, 3], "the controller dropping engines 0 and 2")
    assert rc[:].apply_sync(os.getpid) == [pids[1], pids[3]]
    assert "engines=2 local" in repr(cluster)

    cluster.stop()
    assert repr(cluster) == "<Cluster(profile='default', stopped, engines=0 local)>"
    assert not [pid for pid in [pids[1], pids[3]] if pid_alive(pid)]
    assert left_running(plait_dir) == []


def test_restart_and_signal_engines(plait_dir, clusters):
    cluster = Cluster(n=2)
    clusters.append(cluster)
    rc = cluster.start_and_connect()
    old = rc[:].apply_sync(os.getpid)

    new_ids = cluster.restart_engines()
    assert len(new_ids) == 2 and not set(new_ids) & {0, 1}
    assert cluster.engine_ids == new_ids
    until(lambda: rc.ids == new_ids, "the client seeing only the restarted engines")
    new = rc[:].apply_sync(os.getpid)
    assert not set(new) & set(old)
    assert not [pid for pid in old if pid_alive(pid)]

    cluster.signal_engines(signal.SIGTERM)
    assert all(wait_exit(pid, 10) for pid in new)
    until(lambda: rc.ids == [], "the controller dropping the signalled engines")
    assert cluster.engine_ids == [] and "engines=0" in repr(cluster)
    assert cluster.running  # the controller was not signalled
    cluster.stop()
    assert not cluster.running and not state_file(plait_dir).exists()


# -- clusters of other processes ---------------------------------------------------------------
def test_from_profile_drives_a_cluster_ipcluster_started(plait_dir, clusters):
    env = make_env(plait_dir)
    run_cmd(["ipcluster", "start", "-n", "2", "--daemonize", "--timeout", "60"], env)
    cluster = Cluster.from_profile()
    clusters.append(cluster)
    assert cluster.running and cluster.engine_ids == [0, 1]
    assert repr(cluster) == "<Cluster(profile='default', running, engines=2 local)>"
    rc = cluster.connect_client()
    rc.wait_for_engines(2, timeout=30)

    assert cluster.add_engines(1) == [2]
    rc.wait_for_engines(3, timeout=30)
    assert rc.ids == [0, 1, 2]
    cluster.stop_engines([0])
    until(lambda: rc.ids == [1, 2], "the controller dropping engine 0")
    listed = run_cmd(["ipcluster", "list"], env).stdout.splitlines()
    assert listed[1].split() == ["default", str(cluster.controller_pid), "2", "local"]

    controller = cluster.controller_pid
    cluster.stop()
    assert not pid_alive(controller) and not state_file(plait_dir).exists()
    assert "no cluster is running" in run_cmd(["ipcluster", "list"], env).stdout
    assert left_running(plait_dir) == []


def test_ipcluster_list_and_stop_see_a_cluster_started_from_python(plait_dir, clusters):
    env = make_env(plait_dir)
    cluster = Cluster(n=2)
    clusters.append(cluster)
    cluster.start()
    listed = run_cmd(["ipcluster", "list"], env).stdout.splitlines()
    assert listed[1].split() == ["default", str(cluster.controller_pid), "2", "local"]
    # ipcluster stop ends it, and not the Python process that started it (this one)
    assert "plait cluster stopped" in run_cmd(["ipcluster", "stop"], env).stdout
    assert not cluster.running
    assert "stopped" in repr(cluster)
    assert left_running(plait_dir) == []


def test_from_profile_with_nothing_running_says_so(plait_dir):
    with pytest.raises(ClusterError, match="no cluster is running for profile 'default'"):
        Cluster.from_profile()
    with pytest.raises(ClusterError, match="no cluster is running for profile 'lab'"):
        AsyncCluster.from_profile("lab")


# -- asyncio ------------------------------------------------------------------------------------
def test_async_cluster_start_grow_stop(plait_dir, clusters):
    async def main() -> None:
        cluster = AsyncCluster(n=1)
        clusters.append(cluster.sync)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        assert await cluster.start() is cluster
        ticker.cancel()
        assert ticks > 0  # the event loop went on while the engines started
        assert cluster.running and cluster.engine_ids == [0]
        assert repr(cluster) == "<AsyncCluster(profile='default', running, engines=1 local)>"
        rc = await cluster.connect_client()
        assert await cluster.add_engines(1) == [1]
        rc.wait_for_engines(2, timeout=30)
        assert len(set(rc[:].apply_sync(os.getpid))) == 2
        await cluster.stop()
        assert not cluster.running

    asyncio.run(main())
    assert left_running(plait_dir) == []


def test_async_with_gives_a_client(plait_dir):
    async def main() -> int:
        async with AsyncCluster(n=1) as rc:
            assert rc.ids == [0]
            return rc[0].apply_sync(os.getpid)

    pid = asyncio.run(main())
    assert not pid_alive(pid)
    assert not state_file(plait_dir).exists()
    assert left_running(plait_dir) == []


# -- errors: each leaves nothing running --------------------------------------------------------
def test_a_second_cluster_for_the_same_profile_is_refused(plait_dir, clusters):
    first = Cluster(n=1)
    clusters.append(first)
    first.start()
    second = Cluster(n=1)
    with pytest.raises(ClusterError, match="already running for profile 'default'"):
        second.start()
    with pytest.raises(ClusterError, match="running already"):
        first.start()
    assert not second.running
    rc = first.connect_client()
    assert rc[:].apply_sync(lambda: 6 * 7) == [42]  # the first is untouched
    state = json.loads(state_file(plait_dir).read_text())
    assert sorted(processes_of(plait_dir)) == sorted(
        [first.controller_pid, state["keeper"], *state["engines"]])


def test_bad_options_are_refused_before_anything_starts(plait_dir):
    with pytest.raises(TypeError, match="engine_launcher_class"):
        Cluster(n=1, engine_launcher_class="MPI")  # an ipyparallel option plait lacks
    with pytest.raises(ClusterError, match="engines must be one of local, mpi.*not 'nope'"):
        Cluster(n=1, engines="nope")
    with pytest.raises(ClusterError, match="n must be an int >= 1, not 0"):
        Cluster(n=0)
    assert processes_of(plait_dir) == [] and not state_file(plait_dir).exists()


def test_a_missing_mpiexec_is_named_and_stops_the_controller(plait_dir):
    with pytest.raises(ClusterError, match="'no-such-mpiexec' is not found"):
        Cluster(n=2, engines="mpi", mpiexec="no-such-mpiexec").start()
    assert not state_file(plait_dir).exists()
    assert left_running(plait_dir) == []
    # a controller did start (and wrote its log, named by its pid): it is gone
    for log in (plait_dir / "profile_default" / "log").glob("ipcontroller-*.log"):
        assert not pid_alive(int(log.stem.split("-")[1]))


def test_a_timeout_too_short_for_the_start_leaves_nothing_running(plait_dir):
    with pytest.raises(ClusterError) as info:
        Cluster(n=2, timeout=0.05).start()
    assert not state_file(plait_dir).exists()
    assert left_running(plait_dir) == []
    message = str(info.value)
    assert "0 of 2 engines registered" in message  # how many of n
    assert f"logs in {plait_dir / 'profile_default' / 'log'}" in message  # where to look


def test_engines_too_late_say_how_many_registered_and_where_the_logs_are(plait_dir,
                                                                         clusters):
    cluster = Cluster(n=1)
    clusters.append(cluster)
    rc = cluster.start_and_connect()
    cluster.timeout = 0.05  # too short for an engine to start
    with pytest.raises(ClusterError) as info:
        cluster.add_engines(2)
    assert cluster.engine_ids == [0] and rc.ids == [0]
    state = json.loads(state_file(plait_dir).read_text())
    running = {cluster.controller_pid, state["keeper"], *state["engines"]}
    assert left_running(plait_dir, besides=running) == []
    assert rc[:].apply_sync(lambda: 1) == [1]  # the cluster goes on
    message = str(info.value)
    assert "0 of 2 engines registered within 0.05 s" in message
    assert f"logs in {plait_dir / 'profile_default' / 'log'}" in message


# -- MPI ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mpiexec", MPI_LAUNCHERS)
def test_mpi_engines_know_rank_and_size_and_stop_with_their_mpiexec(plait_dir, clusters,
                                                                    mpiexec):
    args = ["--oversubscribe"] if is_open_mpi(mpiexec) else []  # 3 ranks on 2 cores
    cluster = Cluster(n=3, engines="mpi", mpiexec=mpiexec, mpi_args=args)
    clusters.append(cluster)
    rc = cluster.start_and_connect()
    assert rc.ids == [0, 1, 2]
    assert repr(cluster) == "<Cluster(profile='default', running, engines=3 mpi)>"
    assert sorted(rc[:].apply_sync(ipp.interactive(lambda: rank))) == [0, 1, 2]  # noqa: F821
    assert rc[:].pull("size", block=True) == [3, 3, 3]
    (group,) = json.loads(state_file(plait_dir).read_text())["engine_sets"]
    assert sorted(group["pids"]) == sorted(rc[:].apply_sync(os.getpid))
    with pytest.raises(ClusterError, match="stop together"):
        cluster.stop_engines([0])  # one mpiexec job: all its engines, or none
    processes = [cluster.controller_pid, group["launcher_pid"], *group["pids"]]
    assert all(pid_alive(pid) for pid in processes)

    cluster.stop()
    assert not [pid for pid in processes if pid_alive(pid)]
    assert not state_file(plait_dir).exists()
    assert left_running(plait_dir) == []  # nor any helper of mpiexec


def test_engines_that_cannot_start_say_why_quoting_their_log(tmp_path, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(tmp_path / "p"))
    cluster = ipp.Cluster(n=2, location="127.0.0.2", timeout=30)  # (it listens on 127.0.0.1)
    with pytest.raises(ClusterError) as info:
        cluster.start()
    message = str(info.value)
    assert "exited before it registered (0 of 2 did)" in message
    assert "could not register with the controller at 127.0.0.2" in message  # its log's words
    assert not cluster.running


def test_a_client_of_a_controller_gone_for_good_names_the_profile_and_its_log(tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(tmp_path / "p"))
    cluster = ipp.Cluster(n=1, timeout=30)
    cluster.start()
    furl_file = profile_dirs(None).furl_path(PARALLEL_FURL)
    cluster.stop()
    with pytest.raises(PlaitConnectionError) as info:
        ipp.Client(str(furl_file))
    message = str(info.value)
    assert "nothing listens there: is the controller running?" in message
    assert "profile 'default'; the last controller's log is" in message
    assert "ipcontroller-" in message
