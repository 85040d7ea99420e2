"""Every port the controller listens on can be fixed, so that a firewall can be
opened for exactly those (docs/clusters.md, "What listens where")."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from support.cluster import Cluster, make_env, run_cmd

FLAGS = ("--client-port", "--engine-port", "--client-channel-port", "--engine-channel-port",
         "--data-port", "--status-port")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports of 127.0.0.1 that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith("socket:["):
            inodes.add(str(target)[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_the_six_ports_fixed_are_the_only_ones_and_everything_works(tmp_path):
    ports = free_ports(6)
    d = tmp_path / "p"
    c = Cluster(d, make_env(d), 2, extra=[f"{flag}={port}" for flag, port in
                                          zip(FLAGS, ports, strict=True)])
    try:
        c.start()
        assert listening_ports(c.state()["controller"]) == set(ports)
        rc = c.rc()
        try:
            rc.wait_for_engines(2, timeout=30)
            a = np.arange(2_000_000, dtype=np.float64)  # 16 MB: over the data port
            rc[0].push({"a": a}, block=True)
            assert np.array_equal(rc[0].pull("a", block=True), a)
            assert rc.load_balanced_view().map_sync(lambda x: x + 1, range(10)) == list(
                range(1, 11))
        finally:
            rc.close()
        log = "\n".join(p.read_text() for p in (d / "profile_default" / "log").glob(
            "ipcontroller-*.log"))
        assert f"data port {ports[4]}" in log and f"status port {ports[5]}" in log
        assert (c.security / "ipcontroller-status.url").read_text().startswith(
            f"http://127.0.0.1:{ports[5]}/?token=")
    finally:
        c.stop()


def test_a_port_in_use_is_a_clear_error_and_nothing_runs(tmp_path):
    d = tmp_path / "p"
    env = make_env(d)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = run_cmd(["ipcluster", "start", "-n", "1", "--daemonize", f"--data-port={port}"],
                      env, check=False)
        assert out.returncode == 1
        # what went wrong, quoted from the controller's log
        assert "error: the controller did not start" in out.stderr
        assert f"cannot listen on 127.0.0.1:{port} (the data port)" in out.stderr
    assert not (d / "profile_default" / "run" / "ipcluster.json").exists()
