"""A controller on another host, started over SSH, and SSH tunnels to it: network
namespaces with a real sshd each (see support.netns).  Host 0 plays the
controller's host (a login node, with tunnel=True: the controller listens on its
own 127.0.0.1, which nobody else can reach), the others the engines' hosts."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

import plait.parallel as ipp
from plait.cluster.state import read_state
from plait.security import ENGINE_FURL, PARALLEL_FURL, profile_dirs
from plait.wire import tunnel as tunnels
from plait.wire.errors import ClusterError, PlaitConnectionError
from support.cluster import enroll_flag, processes_of
from support.netns import Hosts, net_namespace, unavailable

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the functions sent to engines
WHY = unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")


def commands_in(hosts: Hosts, host) -> list[str]:
    """The command lines of the processes running in ``host``'s namespace."""
    found = []
    for pid in hosts.pids(host):
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return found


def controllers_in(hosts: Hosts, host) -> list[str]:
    return [c for c in commands_in(hosts, host) if "plait.scripts.ipcontroller" in c]


def ssh_masters() -> list[int]:
    """This test process's SSH tunnel connections (its ssh children)."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=,comm=", "-e"], capture_output=True, text=True)
    return [int(pid) for pid, ppid, comm in (line.split(None, 2) for line in out.stdout.splitlines())
            if int(ppid) == os.getpid() and comm.strip() == "ssh"]


def wait_until(done, within: float = 20.0) -> None:
    """Poll ``done()`` (a process ending elsewhere) until true; AssertionError
    past ``within`` seconds."""
    deadline = time.monotonic() + within
    while not done():
        assert time.monotonic() < deadline, f"not done within {within} s"
        time.sleep(0.05)


def remote_cluster(hosts: Hosts, tmp_path: Path, **options):
    head, *others = hosts.hosts
    return ipp.Cluster(engines="ssh", hosts={f"root@{h.address}": 2 for h in others},
                       controller="ssh", controller_host=f"root@{head.address}",
                       ssh_args=hosts.ssh_args, ssh_plait_dir=str(tmp_path / "remote"),
                       timeout=60, **options)


def test_a_controller_started_on_another_host_over_ssh(hosts, plait_dir, tmp_path):
    head = hosts.hosts[0]
    cluster = remote_cluster(hosts, tmp_path, ip=head.address)
    try:
        rc = cluster.start_and_connect()
        assert rc.ids == [0, 1, 2, 3]
        assert f"on root@{head.address}" in cluster._procs.describe()
        [line] = controllers_in(hosts, head)  # it runs there, not here
        assert f"--ip={head.address}" in line
        assert cluster.controller_pid in hosts.pids(head)
        where = rc[:].apply_sync(net_namespace)
        assert len(set(where)) == 2 and net_namespace() not in where
        # its FURL files were fetched here, private, as if it ran here
        security = profile_dirs(None).security
        for name in (PARALLEL_FURL, ENGINE_FURL):
            assert (security / name).stat().st_mode & 0o077 == 0
            assert f"@{head.address}:" in (security / name).read_text()
        assert rc.load_balanced_view().map_sync(lambda x: x * 3, range(20)) == [
            x * 3 for x in range(20)]
        # another process finds it from the state file, and sees it running
        found = ipp.Cluster.from_profile()
        assert found.running and found.engine_ids == [0, 1, 2, 3]
    finally:
        cluster.stop()
    assert controllers_in(hosts, head) == []
    assert read_state(profile_dirs(None)) is None
    assert not cluster.running


def test_tunnels_reach_a_controller_that_listens_on_its_hosts_loopback(hosts, plait_dir,
                                                                        tmp_path, monkeypatch):
    head = hosts.hosts[0]
    cluster = remote_cluster(hosts, tmp_path, tunnel=True)
    try:
        rc = cluster.start_and_connect()
        assert rc.ids == [0, 1, 2, 3]
        [line] = controllers_in(hosts, head)
        assert "--ip=" not in line  # the default: 127.0.0.1 of the head host only
        client_furl = profile_dirs(None).furl_path(PARALLEL_FURL)
        assert "@127.0.0.1:" in client_furl.read_text()
        assert len(ssh_masters()) == 1  # one SSH connection carries every port
        # 80 MB each way: the data port is tunnelled too
        a = np.random.default_rng(1).random(10 * 2**20)
        rc[1].push({"a": a}, block=True)
        assert np.array_equal(rc[1].pull("a", block=True), a)
        assert rc.load_balanced_view().map_sync(lambda x: x - 1, range(30)) == list(range(-1, 29))

        # a hand-started engine of this host joins through its own tunnel
        log = tmp_path / "engine.log"
        with open(log, "wb") as out:
            engine = subprocess.Popen(
                [sys.executable, "-m", "plait.scripts.ipengine",
                 f"--furl-file={profile_dirs(None).furl_path(ENGINE_FURL)}",
                 enroll_flag(profile_dirs(None).security),
                 f"--ssh=root@{head.address}", f"--ssh-args={shlex.join(hosts.ssh_args)}"],
                stdout=out, stderr=subprocess.STDOUT)
        try:
            [new] = rc.wait_for_engines(5, timeout=60)[4:]
            assert rc[new].apply_sync(net_namespace) == net_namespace()
            rc[new].push({"b": a[:2**20]}, block=True)
            assert np.array_equal(rc[new].pull("b", block=True), a[:2**20])
        finally:
            engine.terminate()
            engine.wait(10)
    finally:
        cluster.stop()
    assert controllers_in(hosts, head) == []
    assert tunnels._via == {}  # the routes went with the tunnel: 127.0.0.1 is ours again
    deadline = time.monotonic() + 10
    while ssh_masters() and time.monotonic() < deadline:
        time.sleep(0.05)  # ssh exits once told to
    assert ssh_masters() == []


def test_a_client_of_its_own_reaches_a_tunnelled_controller_with_sshserver(
        hosts, plait_dir, tmp_path, monkeypatch):
    head = hosts.hosts[0]
    cluster = remote_cluster(hosts, tmp_path, tunnel=True)
    try:
        cluster.start()
        furl_file = profile_dirs(None).furl_path(PARALLEL_FURL)
        # (a fresh process, as a user's notebook would be: no route of this one's)
        monkeypatch.setenv("PLAIT_SSH_COMMAND", shlex.join(["ssh", *hosts.ssh_args]))
        program = ("import plait.parallel as ipp, sys\n"
                   f"rc = ipp.Client({str(furl_file)!r}, sshserver=sys.argv[1])\n"
                   "print(rc.ids, rc[:].apply_sync(lambda: 6 * 7))\n"
                   "rc.close()\n")
        done = subprocess.run([sys.executable, "-c", program, f"root@{head.address}"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[0, 1, 2, 3] [42, 42, 42, 42]"
        # without the tunnel, the controller cannot be reached from here
        done = subprocess.run([sys.executable, "-c", program.replace(", sshserver=sys.argv[1]",
                                                                     ""), "x"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and "PlaitConnectionError" in done.stderr
    finally:
        cluster.stop()


def test_an_ssh_server_that_cannot_be_reached_is_a_clear_error(hosts, plait_dir, tmp_path,
                                                               monkeypatch):
    monkeypatch.setenv("PLAIT_SSH_COMMAND", shlex.join(["ssh", *hosts.ssh_args]))
    nobody = f"root@{hosts.subnet}.99"
    furl_file = tmp_path / "some.furl"
    furl_file.write_text("pb://" + "a" * 32 + "@tcp:127.0.0.1:1/" + "b" * 32 + "\n")
    furl_file.chmod(0o600)
    with pytest.raises(PlaitConnectionError, match=f"cannot open an SSH tunnel through {nobody}"):
        ipp.Client(str(furl_file), sshserver=nobody)
    assert ssh_masters() == [] and tunnels._via == {}


def test_a_wrong_key_for_the_controllers_host_is_a_clear_error_and_nothing_runs(
        hosts, plait_dir, tmp_path):
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    args = [*hosts.ssh_args, "-o", "IdentitiesOnly=yes"]
    args[args.index("-i") + 1] = str(key)
    head = hosts.hosts[0]
    cluster = ipp.Cluster(n=1, engines="local", controller="ssh",
                          controller_host=f"root@{head.address}", ip=head.address,
                          ssh_args=args, timeout=30)
    with pytest.raises(ClusterError) as info:
        cluster.start()
    message = str(info.value)
    assert f"controller on root@{head.address}" in message and "Permission denied" in message
    assert read_state(profile_dirs(None)) is None and processes_of(plait_dir) == []
    assert controllers_in(hosts, head) == []


def test_a_remote_python_that_does_not_exist_is_a_clear_error(hosts, plait_dir, tmp_path):
    head = hosts.hosts[0]
    cluster = ipp.Cluster(n=1, engines="local", controller="ssh",
                          controller_host=f"root@{head.address}", ip=head.address,
                          ssh_args=hosts.ssh_args, ssh_python="/nowhere/python3", timeout=30)
    with pytest.raises(ClusterError, match=f"controller on root@{head.address}.*/nowhere/python3"):
        cluster.start()
    assert processes_of(plait_dir) == [] and controllers_in(hosts, head) == []


def test_a_controller_that_fails_on_its_host_says_why(hosts, plait_dir, tmp_path):
    head = hosts.hosts[0]
    cluster = ipp.Cluster(n=1, engines="local", controller="ssh",
                          controller_host=f"root@{head.address}", ip="10.255.255.1",
                          ssh_args=hosts.ssh_args, ssh_plait_dir=str(tmp_path / "remote"),
                          timeout=30)  # an address that host does not have
    with pytest.raises(ClusterError, match=f"the controller on root@{head.address} did not "
                                           "start"):
        cluster.start()
    assert controllers_in(hosts, head) == [] and processes_of(plait_dir) == []


#: Stands for the Python of a far host whose plait is not this one (older, or
#: broken): run over real SSH as ``ssh_python``, it answers as plait.cluster.remote
#: would, with what ``mode`` says is wrong, then waits for the session to end.
FAR_SIDE = """
import json, os, sys
mode = {mode!r}
furl = "pb://" + "a" * 32 + "@tcp:10.0.0.1:4000/" + "b" * 26
furls = {{name: furl for name in {names!r}}}
if mode == "no key":
    print(json.dumps({{"pid": os.getpid(), "furls": furls}}), flush=True)
elif mode == "missing furl":
    furls.popitem()
    print(json.dumps({{"pid": os.getpid(), "furls": furls, "enroll_key": "0" * 64}}), flush=True)
elif mode == "bad furl":
    furls[{names!r}[0]] = "pb://short@tcp:10.0.0.1:4000/" + "b" * 26
    print(json.dumps({{"pid": os.getpid(), "furls": furls, "enroll_key": "0" * 64}}), flush=True)
sys.stdin.read()  # (silent, for "silent": until the session ends)
"""


@pytest.mark.parametrize("mode, message", [
    ("no key", re.escape("sent no enrollment key (is plait there as new as here?)")),
    ("missing furl", re.escape("sent the wrong FURL files (missing ['ipcontroller-client.furl']")),
    ("bad furl", "the ipcontroller-engine.furl of the controller on .* has a bad tub id 'short'"),
    ("silent", r"the controller on .* was not ready within 3 s"),
])
def test_a_far_side_that_answers_wrong_is_a_clear_error_and_nothing_stays(
        hosts, plait_dir, tmp_path, monkeypatch, mode, message):
    from plait.cluster import remote
    from plait.security import MEC_FURL, TC_FURL

    monkeypatch.setattr(remote, "SSH_SLACK", 1.0)  # (the wait: the timeout and this)
    head = hosts.hosts[0]
    far_python = tmp_path / "far-python"
    names = [ENGINE_FURL, MEC_FURL, TC_FURL, PARALLEL_FURL]
    far_python.write_text(f"#!{sys.executable}\n" + FAR_SIDE.format(mode=mode, names=names))
    far_python.chmod(0o700)
    cluster = ipp.Cluster(n=1, engines="local", controller="ssh",
                          controller_host=f"root@{head.address}", ip=head.address,
                          ssh_args=hosts.ssh_args, ssh_python=str(far_python), timeout=2)
    with pytest.raises(ClusterError, match=message):
        cluster.start()
    assert read_state(profile_dirs(None)) is None and processes_of(plait_dir) == []
    security = profile_dirs(None).security
    assert not (security / ENGINE_FURL).exists()  # nothing of what it sent is kept
    wait_until(lambda: not [c for c in commands_in(hosts, head) if str(far_python) in c])


def test_an_ssh_command_that_is_not_installed_is_a_clear_error(plait_dir, tmp_path):
    cluster = ipp.Cluster(n=1, engines="local", controller="ssh", controller_host="root@head",
                          ip="10.1.2.3", ssh=str(tmp_path / "no-ssh"), timeout=5)
    with pytest.raises(ClusterError, match=re.escape(f"cannot start the controller on root@head: "
                                                     f"'{tmp_path / 'no-ssh'}' is not installed")):
        cluster.start()
    assert read_state(profile_dirs(None)) is None and processes_of(plait_dir) == []


def test_bad_remote_controller_options_are_refused_at_once(hosts, plait_dir):
    with pytest.raises(ClusterError, match="needs controller_host"):
        ipp.Cluster(n=1, controller="ssh")
    with pytest.raises(ClusterError, match="controller must be one of local, ssh, slurm, not 'moon'"):
        ipp.Cluster(n=1, controller="moon")
    with pytest.raises(ClusterError, match="tunnel=True reaches a controller on another host"):
        ipp.Cluster(n=1, tunnel=True)
    with pytest.raises(ClusterError, match="tunnels serve local and SSH engines"):
        ipp.Cluster(n=1, engines="mpi", controller="ssh", controller_host="root@h", tunnel=True)
    head = hosts.hosts[0]
    cluster = ipp.Cluster(n=1, controller="ssh", controller_host=f"root@{head.address}",
                          ssh_args=hosts.ssh_args)
    with pytest.raises(ClusterError, match="reached only through SSH tunnels"):
        cluster.start()  # listening on its 127.0.0.1, without a tunnel: nobody could reach it
    assert controllers_in(hosts, head) == []


def test_ipcluster_starts_lists_and_stops_a_controller_on_another_host(hosts, tmp_path):
    from support.cluster import make_env, run_cmd

    head, node = hosts.hosts[0], hosts.hosts[1]
    env = make_env(tmp_path / "p")
    out = run_cmd(["ipcluster", "start", "--controller=ssh", f"--controller-host=root@{head.address}",
                   "--tunnel", "--engines=ssh", f"--hosts=root@{node.address}:2",
                   f"--ssh-args={shlex.join(hosts.ssh_args)}", "--daemonize"], env, timeout=120)
    try:
        assert "controller and 2 engines [0, 1]" in out.stdout
        [line] = controllers_in(hosts, head)
        listed = run_cmd(["ipcluster", "list"], env)
        assert f"@root@{head.address}" in listed.stdout and " 2  ssh" in listed.stdout
        run_cmd(["ipcluster", "stop"], env)
        assert controllers_in(hosts, head) == []
        assert not any("ipengine" in c or "_zygote" in c for c in commands_in(hosts, node))
    finally:  # whatever failed above, nothing of the cluster stays
        run_cmd(["ipcluster", "stop"], env, check=False)


def test_a_foreground_ipcluster_with_a_remote_controller_stops_it_on_ctrl_c(hosts, tmp_path):
    import signal

    from support.cluster import make_env

    head = hosts.hosts[0]
    env = make_env(tmp_path / "p")
    proc = subprocess.Popen(
        [sys.executable, "-m", "plait.scripts.ipcluster", "start", "-n", "1",
         "--controller=ssh", f"--controller-host=root@{head.address}", f"--ip={head.address}",
         f"--ssh-args={shlex.join(hosts.ssh_args)}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # an event: it says when the cluster is ready
            if "press Ctrl-C" in line:
                break
        else:
            raise AssertionError(f"ipcluster exited: {proc.wait()}")
        assert len(controllers_in(hosts, head)) == 1
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(60) == 0 and "plait cluster stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert controllers_in(hosts, head) == []
    assert processes_of(tmp_path / "p") == []


def test_a_start_refused_beside_a_running_remote_cluster_leaves_it_alone(hosts, plait_dir,
                                                                        tmp_path):
    head = hosts.hosts[0]
    first = ipp.Cluster(n=1, controller="ssh", controller_host=f"root@{head.address}",
                        ip=head.address, ssh_args=hosts.ssh_args, timeout=60)
    try:
        first.start()
        second = ipp.Cluster(n=1, controller="ssh", controller_host=f"root@{head.address}",
                             ip=head.address, ssh_args=hosts.ssh_args)
        with pytest.raises(ClusterError, match="already running"):
            second.start()
        second.stop()
        assert read_state(profile_dirs(None)) is not None  # the first one's is kept
        assert ipp.Cluster.from_profile().running
    finally:
        first.stop()
    assert controllers_in(hosts, head) == [] and read_state(profile_dirs(None)) is None


def test_the_far_side_keeps_the_controller_only_when_told_to(plait_dir):
    done = subprocess.run([sys.executable, "-m", "plait.cluster.remote", "--timeout=30"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1  # its SSH session ended before it heard "keep"
    assert '"pid"' in done.stdout  # (the controller had started)
    assert processes_of(plait_dir) == []  # and was stopped: nothing stays behind


def test_a_tunnel_whose_ssh_connection_died_is_opened_again(hosts, plait_dir, tmp_path):
    import signal

    cluster = remote_cluster(hosts, tmp_path, tunnel=True)
    try:
        rc = cluster.start_and_connect()
        [master] = ssh_masters()
        os.kill(master, signal.SIGKILL)  # as a network cut would end it
        assert wait_for_exit(master)
        rc.close()
        rc = cluster.connect_client()  # the next connection opens the tunnel again
        assert rc[:].apply_sync(lambda: 1) == [1, 1, 1, 1]
        assert len(ssh_masters()) == 1 and ssh_masters() != [master]
    finally:
        cluster.stop()


def wait_for_exit(pid: int) -> bool:
    from support.cluster import wait_exit

    return wait_exit(pid, 10)
