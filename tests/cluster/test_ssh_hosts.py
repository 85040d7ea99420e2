"""Engines on other hosts over SSH: network namespaces with a real sshd each
(see support.netns), the controller reached over their veth network."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

import plait.parallel as ipp
from plait.cluster.state import read_state
from plait.security import profile_dirs
from plait.wire.errors import ClusterError
from support.cluster import engine_pid, left_running, make_env, processes_of, run_cmd, wait_exit
from support.netns import net_namespace, unavailable

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the functions sent to engines
WHY = unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")


def ssh_cluster(hosts, remote: Path, per_host: int = 2, **options):
    return ipp.Cluster(engines="ssh", hosts=hosts.table(per_host), ip=hosts.controller_ip,
                       ssh_args=hosts.ssh_args, ssh_plait_dir=str(remote), timeout=60,
                       **options)


def slow_square(x):
    import time

    time.sleep(0.2)
    return x * x


def test_three_hosts_work_as_one_cluster_and_a_cut_host_is_dropped(hosts, plait_dir, tmp_path):
    cluster = ssh_cluster(hosts, tmp_path / "remote", engine_timeout=3)
    try:
        rc = cluster.start_and_connect()
        assert rc.ids == [0, 1, 2, 3, 4, 5]
        where = rc[:].apply_sync(net_namespace)
        assert len(set(where)) == 3 and net_namespace() not in where  # 3 other hosts
        # MultiEngine, load balancing and 100 MB across hosts
        rc[:].execute("y = 7", block=True)
        assert rc[:].pull("y", block=True) == [7] * 6
        lview = rc.load_balanced_view()
        assert lview.map_sync(lambda x: x + 1, range(50)) == list(range(1, 51))
        far = where.index(where[-1])  # an engine of the last host
        a = np.random.default_rng(0).random(100 * 2**20 // 8)
        rc[far].push({"a": a}, block=True)
        assert np.array_equal(rc[far].pull("a", block=True), a)
        # the engine FURL was never written on the hosts
        assert not any("pb://" in p.read_text(errors="ignore")
                       for p in (tmp_path / "remote").rglob("*") if p.is_file())
        # one host's network cut: its engines are dropped, retried tasks end elsewhere
        lost = [i for i, ns in zip(rc.ids, where, strict=True) if ns == where[-1]]
        [victim] = [h for h in hosts.hosts if h.run("readlink", "/proc/self/ns/net",
                                                    capture_output=True, text=True
                                                    ).stdout.strip() == where[-1]]
        with lview.temp_flags(retries=3):
            ar = lview.map_async(slow_square, range(24))
        victim.cut()
        assert ar.get(timeout=60) == [x * x for x in range(24)]
        deadline = time.monotonic() + 3 + 10
        while set(lost) & set(rc.ids) and time.monotonic() < deadline:
            time.sleep(0.05)  # the controller's heartbeat decides; the client hears of it
        assert not set(lost) & set(rc.ids) and len(rc.ids) == 4
    finally:
        cluster.stop()
        for host in hosts.hosts:
            subprocess.run(["ip", "link", "set", host.veth, "up"], check=True)
    assert read_state(profile_dirs(None)) is None


def test_a_wrong_key_is_a_clear_error_and_nothing_runs(hosts, plait_dir, tmp_path):
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    args = [*hosts.ssh_args, "-o", "IdentitiesOnly=yes"]
    args[args.index("-i") + 1] = str(key)
    cluster = ipp.Cluster(engines="ssh", hosts={f"root@{hosts.hosts[0].address}": 1},
                          ip=hosts.controller_ip, ssh_args=args, timeout=30)
    with pytest.raises(ClusterError) as info:
        cluster.start()
    message = str(info.value)
    assert f"root@{hosts.hosts[0].address}" in message and "Permission denied" in message
    assert read_state(profile_dirs(None)) is None and processes_of(plait_dir) == []


def test_an_unreachable_host_is_a_clear_error_and_nothing_runs(hosts, plait_dir):
    nobody = f"{hosts.subnet}.99"
    cluster = ipp.Cluster(engines="ssh", hosts={f"root@{nobody}": 1}, ip=hosts.controller_ip,
                          ssh_args=hosts.ssh_args, timeout=30)
    with pytest.raises(ClusterError, match=f"SSH session to root@{nobody} ended"):
        cluster.start()
    assert read_state(profile_dirs(None)) is None and processes_of(plait_dir) == []


def test_a_controller_on_loopback_is_refused_for_ssh_engines(hosts, plait_dir):
    cluster = ipp.Cluster(engines="ssh", hosts=hosts.table(1), ssh_args=hosts.ssh_args)
    with pytest.raises(ClusterError, match="cannot reach a controller listening on 127.0.0.1"):
        cluster.start()
    assert processes_of(plait_dir) == []


def test_ipcluster_starts_ssh_engines_from_a_hosts_file_and_stops_them(hosts, tmp_path):
    env = make_env(tmp_path / "p")
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("# lab\n" + "".join(f"root@{h.address} 2\n" for h in hosts.hosts[:2]))
    out = run_cmd(["ipcluster", "start", "--engines=ssh", f"--hosts={hosts_file}",
                   f"--ip={hosts.controller_ip}", f"--ssh-args={' '.join(hosts.ssh_args)}",
                   "--daemonize"], env, timeout=120)
    try:
        assert "controller and 4 engines [0, 1, 2, 3]" in out.stdout
        state = json.loads((tmp_path / "p" / "profile_default" / "run" / "ipcluster.json")
                           .read_text())
        assert state["engines"] == []  # no engine of this host: the pids below are the hosts'
        engines = [pid for group in state["engine_sets"] for pid in group["pids"]]
        in_hosts = {p for h in hosts.hosts[:2] for p in hosts.pids(h)}
        assert len(engines) == 4 and set(engines) <= in_hosts
        assert {g["host"] for g in state["engine_sets"]} == {f"root@{h.address}"
                                                             for h in hosts.hosts[:2]}
        listed = run_cmd(["ipcluster", "list"], env)
        assert "ssh" in listed.stdout
        run_cmd(["ipcluster", "stop"], env)
        assert all(wait_exit(pid, 10) for pid in engines)
    finally:  # whatever failed above, nothing of the cluster stays
        run_cmd(["ipcluster", "stop"], env, check=False)


def test_an_engine_cut_off_for_a_while_joins_again_with_its_namespace(hosts, plait_dir,
                                                                      tmp_path):
    cluster = ipp.Cluster(engines="ssh", hosts={f"root@{hosts.hosts[0].address}": 1},
                          ip=hosts.controller_ip, ssh_args=hosts.ssh_args, timeout=60,
                          ssh_plait_dir=str(tmp_path / "remote"), engine_timeout=3)
    try:
        rc = cluster.start_and_connect()
        assert rc.ids == [0]
        rc[0].execute("kept = 41 + 1", block=True)
        hosts.hosts[0].cut()
        deadline = time.monotonic() + 30
        while rc.ids and time.monotonic() < deadline:
            time.sleep(0.05)  # the controller drops it after the heartbeat deadline
        assert rc.ids == []
        subprocess.run(["ip", "link", "set", hosts.hosts[0].veth, "up"], check=True)
        [again] = rc.wait_for_engines(1, timeout=60)  # it joins again, under its id
        assert again == 0
        assert rc[again].pull("kept", block=True) == 42
    finally:
        cluster.stop()
        subprocess.run(["ip", "link", "set", hosts.hosts[0].veth, "up"], check=True)


def test_ssh_engines_that_die_are_replaced_on_their_host_under_their_ids(hosts, plait_dir,
                                                                         tmp_path):
    """restart_engines=True for SSH engines: the fork server of each host stays
    there, supervising; a killed engine comes back on the same host under its id,
    with the setup code; stopping the cluster stops the supervisors and engines,
    even those of a host whose supervisor died."""
    import os
    import signal

    cluster = ssh_cluster(hosts, tmp_path / "remote", per_host=1, restart_engines=True)
    supervisors: list[int] = []
    engines: list[int] = []
    try:
        rc = cluster.start_and_connect()
        assert rc.ids == [0, 1, 2]
        assert rc.setup("SETUP = 'replayed'") == [0, 1, 2]
        where = rc[:].apply_sync(net_namespace)
        old = engine_pid(rc, 1)
        os.kill(old, signal.SIGKILL)  # (the hosts share this machine's pids)
        assert wait_exit(old, 10)
        new = engine_pid(rc, 1, than=old, within=60)
        assert rc.ids == [0, 1, 2]
        assert rc[1].apply_sync(net_namespace) == where[1]  # on its host again
        assert rc[1].pull("SETUP", block=True) == "replayed"
        os.kill(new, signal.SIGKILL)  # and again: it is watched as the first one was
        newer = engine_pid(rc, 1, than=new, within=60)
        state = json.loads((plait_dir / "profile_default" / "run" / "ipcluster.json")
                           .read_text())
        supervisors = [g["launcher_pid"] for g in state["engine_sets"] if g.get("supervised")]
        assert len(supervisors) == 3
        engines += rc[:].apply_sync(os.getpid)
        assert newer in engines
        os.kill(supervisors[0], signal.SIGKILL)  # a supervisor gone: its engines
        assert wait_exit(supervisors[0], 10)      # are still found, by its tag
    finally:
        cluster.stop()
    for pid in [*supervisors, *engines]:
        assert wait_exit(pid, 10), f"process {pid} of a host still runs"
    assert read_state(profile_dirs(None)) is None


def test_supervised_ssh_engines_recorded_without_a_tag_still_all_stop(hosts, plait_dir,
                                                                      tmp_path):
    """A cluster state written without the hosts' tags (by an older plait): stopping
    it goes by the recorded pids, the supervisors' first, so that no supervisor is
    left to start again what was stopped."""
    import os

    cluster = ssh_cluster(hosts, tmp_path / "remote", per_host=1, restart_engines=True)
    supervisors: list[int] = []
    engines: list[int] = []
    try:
        rc = cluster.start_and_connect()
        engines = rc[:].apply_sync(os.getpid)
        rc.close()
        path = plait_dir / "profile_default" / "run" / "ipcluster.json"
        state = json.loads(path.read_text())
        for group in state["engine_sets"]:
            assert group.pop("tag", None) is not None
        supervisors = [g["launcher_pid"] for g in state["engine_sets"]]
        assert len(supervisors) == 3 and None not in supervisors
        path.write_text(json.dumps(state))
        ipp.Cluster.from_profile().stop()
        # (checked before the first Cluster's own stop, which knows the tags)
        for pid in [*supervisors, *engines]:
            assert wait_exit(pid, 10), f"process {pid} of a host still runs"
        assert read_state(profile_dirs(None)) is None
    finally:
        cluster.stop()


_NO_SUPERVISOR = '''\
import os
import sys

if "plait.scripts._zygote" in getattr(sys, "orig_argv", ()):
    _fork = os.fork

    def fork():  # (the hand-over to the supervisor fails, as with no process left)
        if sys._getframe(1).f_code.co_name == "_leave_session":
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return _fork()

    os.fork = fork
'''


def test_a_fork_server_that_hands_over_to_no_supervisor_is_a_clear_error(hosts, plait_dir,
                                                                         tmp_path):
    """A host's fork server that ends without naming its supervisor (it could not
    fork one): start fails, saying which host and quoting its log, and nothing
    is left running there or on the other hosts."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NO_SUPERVISOR)
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    remote = tmp_path / "remote"
    cluster = ssh_cluster(hosts, remote, per_host=1, restart_engines=True,
                          ssh_python=str(python))
    try:
        with pytest.raises(ClusterError) as info:
            cluster.start()
    finally:
        cluster.stop()  # (nothing to stop, unless it started after all)
    message = str(info.value)
    assert "ended without supervising its engines" in message
    assert "Resource temporarily unavailable" in message  # (its log, quoted)
    assert any(h.address in message for h in hosts.hosts)
    assert left_running(remote) == [] and left_running(plait_dir) == []
    assert read_state(profile_dirs(None)) is None
