"""Hosts for the SSH tests: network namespaces, each with its own address and a
real ``sshd``, on a bridge of this machine.

Each host is a network namespace joined to a bridge in the root namespace
by a veth pair. It has its own address on the bridge's subnet and runs an
OpenSSH server in the foreground, with a host key and an authorized user
key made for the test. The controller listens on the bridge's address, so
engines reach it over the veth network, not over loopback. Cutting a host
off (``cut()``) brings its veth down.

This needs root, ``ip`` (iproute2) and ``/usr/sbin/sshd`` (Debian's
openssh-server); :func:`unavailable` says what is missing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cloudpickle

SSHD = "/usr/sbin/sshd"


def unavailable() -> str | None:
    """Why namespace hosts cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip command is not installed"
    if not os.path.exists(SSHD):
        return "sshd is not installed (apt-get install openssh-server)"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "the OpenSSH client is not installed"
    probe = f"plprobe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if made.returncode != 0:
        return f"cannot make network namespaces: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def net_namespace() -> str:
    """The network namespace of the calling process (sent to engines: where they run)."""
    import os

    return os.readlink("/proc/self/ns/net")


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


@dataclass
class Host:
    name: str  # the namespace
    address: str
    veth: str  # the root namespace's end
    sshd: subprocess.Popen | None = None

    def cut(self) -> None:
        """Take the host off the network (its link goes down)."""
        _ip("link", "set", self.veth, "down")

    def run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside the host's namespace."""
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], **kw)


@dataclass
class Hosts:
    """``n`` namespace hosts with sshd, made in ``folder``; use as a context manager."""

    n: int
    folder: Path
    hosts: list[Host] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = secrets.token_hex(2)
        self.tag = tag
        self.bridge = f"plbr{tag}"
        self.subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
        self.controller_ip = f"{self.subnet}.1"
        self.key = self.folder / "user_key"

    # -- what the tests use ------------------------------------------------------------
    @property
    def ssh_args(self) -> list[str]:
        return ["-i", str(self.key), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=5"]

    def table(self, per_host: int) -> dict[str, int]:
        return {f"root@{h.address}": per_host for h in self.hosts}

    # -- making and unmaking -----------------------------------------------------------
    def __enter__(self) -> Hosts:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._make()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _make(self) -> None:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
                       check=True)
        authorized = self.folder / "authorized_keys"
        authorized.write_text((self.folder / "user_key.pub").read_text())
        authorized.chmod(0o600)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.controller_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
        for i in range(self.n):
            host = Host(f"pl{self.tag}h{i}", f"{self.subnet}.{10 + i}", f"pl{self.tag}v{i}")
            self.hosts.append(host)
            _ip("netns", "add", host.name)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
                "netns", host.name)
            _ip("link", "set", host.veth, "master", self.bridge)
            _ip("link", "set", host.veth, "up")
            _ip("addr", "add", f"{host.address}/24", "dev", "eth0", ns=host.name)
            _ip("link", "set", "eth0", "up", ns=host.name)
            _ip("link", "set", "lo", "up", ns=host.name)
            self._start_sshd(host, authorized)

    def _start_sshd(self, host: Host, authorized: Path) -> None:
        key = self.folder / f"host_key_{host.name}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        config = self.folder / f"sshd_config_{host.name}"
        config.write_text(
            f"ListenAddress {host.address}\nPort 22\nHostKey {key}\n"
            f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            f"PidFile {self.folder}/sshd_{host.name}.pid\nStrictModes no\nUsePAM no\n"
            "MaxStartups 100:30:200\nMaxSessions 100\n")
        host.sshd = subprocess.Popen(
            ["ip", "netns", "exec", host.name, SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        assert host.sshd.stderr is not None
        for line in host.sshd.stderr:  # an event: sshd says when it listens
            if "Server listening" in line:
                break
        else:
            raise RuntimeError(f"sshd in {host.name} exited: {host.sshd.wait()}")
        # what it logs from now on is read (else its pipe fills and sshd blocks)
        threading.Thread(target=host.sshd.stderr.read, daemon=True).start()

    def pids(self, host: Host) -> list[int]:
        """The processes running in ``host``'s namespace (engines, sshd...)."""
        out = subprocess.run(["ip", "netns", "pids", host.name], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def __exit__(self, *exc: object) -> None:
        for host in self.hosts:
            if host.sshd is not None and host.sshd.poll() is None:
                host.sshd.kill()
                host.sshd.wait()
            for pid in self.pids(host):  # whatever a test left there
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "link", "delete", host.veth], capture_output=True)
            subprocess.run(["ip", "netns", "delete", host.name], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)


# net_namespace travels to engines by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
