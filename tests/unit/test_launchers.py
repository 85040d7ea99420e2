"""The launchers' pure parts: who is believed on the notice socket, which host
names reach ssh, and which engine sets stop only whole."""

from __future__ import annotations

import os
import socket
import time

import pytest

from plait.cluster.control import ClusterProcesses
from plait.cluster.launchers import EngineSet, Notices, ssh_prefix
from plait.security import profile_dirs
from plait.wire.errors import ClusterError


def announce(notices: Notices, engine_id: int, pid: int | None = None,
             user: int | None = None) -> None:
    """A process (of ``user``, else ours) sends ``engine ID PID`` (its own pid unless
    ``pid``) on the notice socket."""
    child = os.fork()
    if child == 0:
        try:
            if user is not None:
                os.setgid(user)
                os.setuid(user)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect("\0" + notices.name)
                s.sendall(f"engine {engine_id} {pid or os.getpid()}\n".encode())
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def test_notices_are_believed_only_from_the_users_own_processes_for_themselves(tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(tmp_path))
    dirs = profile_dirs(None)
    notices = Notices()
    try:
        if os.geteuid() == 0:  # another user's notice is dropped
            announce(notices, 7, user=65534)
        announce(notices, 8, pid=os.getpid())  # ours, but for another pid: dropped
        announce(notices, 9)  # ours, for itself: believed
        engines = EngineSet("local", 1)
        notices.wait(engines, time.monotonic() + 10, 10, dirs)
        assert engines.ids == [9]
    finally:
        notices.close()


@pytest.mark.parametrize("host", ["-oProxyCommand=touch /tmp/x", "", "two words"])
def test_host_names_that_ssh_would_misread_are_refused(host):
    with pytest.raises(ClusterError, match="is not a host name"):
        ssh_prefix(host)


def test_the_host_comes_after_the_end_of_ssh_options():
    assert ssh_prefix("me@node1", "ssh", ("-p", "2222")) == [
        "ssh", "-o", "BatchMode=yes", "-p", "2222", "--", "me@node1"]


def test_the_engines_of_a_batch_job_or_of_one_mpiexec_stop_together(tmp_path, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(tmp_path))
    procs = ClusterProcesses()
    procs.engine_sets = [EngineSet("slurm", 2, ids=[0, 1], job="42")]
    with pytest.raises(ClusterError, match="the engines of one batch job stop together"):
        procs.stop_engines([0])
    procs.engine_sets = [EngineSet("mpi", 2, ids=[2, 3], pids=[10**7, 10**7 + 1])]
    with pytest.raises(ClusterError, match="started by one mpiexec stop together"):
        procs.stop_engines([3])


def test_engines_whose_notices_cannot_come_are_ready_once_the_controller_counts_them(
        tmp_path, monkeypatch):
    """The ranks of an mpiexec on other nodes cannot reach this host's notice
    socket: the controller's count says they are there."""
    monkeypatch.setenv("PLAIT_DIR", str(tmp_path))
    notices = Notices()
    try:
        announce(notices, 4)  # the one rank of this host
        engines = EngineSet("mpi", 3)
        counts = iter([[4], [4, 5], [4, 5, 6]])
        notices.wait(engines, time.monotonic() + 10, 10, profile_dirs(None),
                     new_ids=lambda: next(counts, [4, 5, 6]))
        assert engines.ids == [4, 5, 6] and len(engines.pids) == 1
    finally:
        notices.close()
