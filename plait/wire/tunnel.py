"""SSH tunnels: reaching a controller through a host that can reach it.

A client or an engine behind NAT, or outside a login node that is the only
way into a cluster, cannot dial the controller's addresses itself.  Given an
SSH server that can (``Client(sshserver='login')``, ``ipengine --ssh=login``),
plait opens one SSH connection to it (an OpenSSH control master) and
forwards a port of this host's loopback to each address the controller
serves on, as it is first needed: the FURL's port, then the channel port a
ticket names, then the data port a bulk descriptor names.

Security is unchanged, and does not rest on the tunnel: every connection
made through it is still TLS, checked against the certificate the FURL
names (its tub id), and still needs the FURL's secret or a one-time ticket.
The forwarded ports listen on 127.0.0.1 only.

Routing is by host: once :func:`use_tunnel` is told that the controller's
FURL names ``host``, every connection this process makes to ``host``, on
any port, goes through the tunnel (:func:`route`, :func:`route_furl`).  A
process that reaches two controllers naming the same host, one through a
tunnel and one directly, is not supported (its direct connections would be
refused by the TLS check: nothing reaches the wrong controller silently).
"""

from __future__ import annotations

import atexit
import os
import queue
import random
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from plait.wire.errors import PlaitConnectionError

#: Seconds an SSH server has to accept us, and how many times we try.
SSH_TIMEOUT = 20.0
OPEN_ATTEMPTS = 4
#: What ssh says when trying again cannot help.
_FINAL = ("Permission denied", "Host key verification failed", "Could not resolve",
          "not installed", "No route to host", "no answer within")

_lock = threading.Lock()
_via: dict[str, SSHTunnel] = {}  # the host a FURL names -> the tunnel reaching it
_users: dict[str, int] = {}  # how many use_tunnel calls a host's route serves
_open: dict[tuple[str, str, tuple[str, ...]], SSHTunnel] = {}
_opening = threading.Lock()


class SSHTunnel:
    """One SSH connection to ``server`` carrying forwarded ports.

    ``command`` is the ssh program (and options of its own, split as a shell
    would), ``args`` more ssh options (``['-i', 'key', '-p', '2222']``).
    :meth:`open` connects; :meth:`forward` adds a port; :meth:`close` ends it.
    """

    def __init__(self, server: str, command: str = "ssh", args: tuple[str, ...] = ()):
        if not server or server.startswith("-") or any(c.isspace() for c in server):
            raise PlaitConnectionError(f"{server!r} is not an SSH server name")
        self.server = server
        self.command = command
        self.args = tuple(args)
        self._folder = tempfile.mkdtemp(prefix="plait-ssh-")  # private (0700)
        self._control = os.path.join(self._folder, "control")
        self._forwards: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self.closed = False

    def _ssh(self, *options: str) -> list[str]:
        return [*shlex.split(self.command), "-o", "BatchMode=yes", "-S", self._control,
                *options, *self.args, "--", self.server]

    def open(self) -> SSHTunnel:
        """Connect (blocking).  PlaitConnectionError quoting ssh when it cannot.

        The SSH connection is a child of this process that ends with it (even
        when it is killed): ``LocalCommand`` tells us when the server accepted
        us, the kernel's parent-death signal ends it, and ``ControlPersist=no``
        keeps a user's ssh configuration from sending it to the background.
        A server that drops the attempt (sshd's ``MaxStartups`` when many
        engines connect at once) is tried again a few times.
        """
        for attempt in range(OPEN_ATTEMPTS):
            why = self._open_once()
            if why is None:
                atexit.register(self.close)
                return self
            if attempt + 1 == OPEN_ATTEMPTS or any(word in why for word in _FINAL):
                break
            time.sleep(random.uniform(0.1, 0.5) * (attempt + 1))  # a server too busy
        self._remove()
        raise PlaitConnectionError(f"cannot open an SSH tunnel through {self.server}: {why}")

    def _open_once(self) -> str | None:
        """One attempt: None once connected, else why not."""
        log = os.path.join(self._folder, "ssh.log")
        command = self._ssh("-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-N",
                            "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=10",
                            "-o", "PermitLocalCommand=yes", "-o", f"LocalCommand=echo {_READY}")
        try:
            os.unlink(self._control)  # (left by an earlier master that died)
        except FileNotFoundError:
            pass
        try:
            with open(log, "wb") as err:
                self._proc = _spawn(command, err)
        except FileNotFoundError:
            return f"{self.command!r} is not installed"
        assert self._proc.stdout is not None
        out = self._proc.stdout.fileno()
        said = b""
        deadline = time.monotonic() + SSH_TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            while _READY.encode() not in said:
                left = deadline - time.monotonic()
                chunk = os.read(out, 4096) if left > 0 and sel.select(left) else None
                if not chunk:
                    self._proc.kill()
                    code = self._proc.wait()
                    lines = open(log, errors="replace").read().strip().splitlines()
                    return (f"no answer within {SSH_TIMEOUT:g} s" if chunk is None else
                            lines[-1] if lines else f"ssh exited with code {code}")
                said += chunk
        return None

    def alive(self) -> bool:
        """Whether the SSH connection is up (it ends when the server or the network goes)."""
        return not self.closed and self._proc is not None and self._proc.poll() is None

    def forward(self, host: str, port: int) -> int:
        """The port of 127.0.0.1 that reaches ``host:port`` as the server sees it
        (made at the first call; a connection that died is made again, with
        new ports).  PlaitConnectionError when ssh cannot."""
        with self._lock:
            if self.closed:
                raise PlaitConnectionError(f"the SSH tunnel through {self.server} is closed")
            if not self.alive():
                self._forwards.clear()
                if self._proc is not None:
                    self._proc.wait()
                self.open()
            local = self._forwards.get((host, port))
            if local is not None:
                return local
            for _ in range(3):  # a port taken between choosing it and forwarding it
                local = _free_port()
                target = f"[{host}]" if ":" in host else host
                done = subprocess.run(
                    self._ssh("-O", "forward", "-L", f"127.0.0.1:{local}:{target}:{port}"),
                    stdin=subprocess.DEVNULL, capture_output=True, text=True,
                    timeout=SSH_TIMEOUT)
                if done.returncode == 0:
                    self._forwards[host, port] = local
                    return local
            said = (done.stderr or "").strip()
            raise PlaitConnectionError(
                f"the SSH tunnel through {self.server} cannot forward to {host}:{port}: "
                f"{said or f'ssh exited with code {done.returncode}'}")

    @property
    def local_ports(self) -> list[int]:
        with self._lock:
            return sorted(self._forwards.values())

    def close(self) -> None:
        """End the SSH connection and every forward (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._remove()
        with _lock:
            for host in [h for h, t in _via.items() if t is self]:
                del _via[host]
                _users.pop(host, None)
            for key in [k for k, t in _open.items() if t is self]:
                del _open[key]

    def _remove(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


_READY = "plait-tunnel-ready"


def _spawn(command: list[str], err: Any) -> subprocess.Popen:
    """Start ``command`` from one thread that lives as long as the process, so that
    the parent-death signal (Linux: it follows the thread that forked) comes only
    when the process ends."""
    global _spawner
    with _lock:
        if _spawner is None:
            _spawner = queue.SimpleQueue()
            threading.Thread(target=_serve_spawns, args=(_spawner,), daemon=True,
                             name="plait-ssh-spawner").start()
        requests = _spawner
    answer: queue.SimpleQueue = queue.SimpleQueue()
    requests.put((command, err, answer))
    ok, value = answer.get()
    if not ok:
        raise value
    return value


def _serve_spawns(requests: queue.SimpleQueue) -> None:
    while True:
        command, err, answer = requests.get()
        try:
            answer.put((True, subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.PIPE, stderr=err,
                                               preexec_fn=_die_with_parent)))
        except BaseException as exc:
            answer.put((False, exc))


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_spawner: queue.SimpleQueue | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tunnel_to(server: str, key: str | None = None, command: str | None = None,
              args: tuple[str, ...] = ()) -> SSHTunnel:
    """The open tunnel through ``server`` (one per server, key and options in a
    process), opened now if need be (blocking).  ``key``: an identity file;
    ``command``: the ssh command, by default ``$PLAIT_SSH_COMMAND`` or ``ssh``
    (as ``GIT_SSH_COMMAND`` is git's: ``'ssh -F ~/.ssh/lab_config'``)."""
    command = command or os.environ.get("PLAIT_SSH_COMMAND") or "ssh"
    server, port = _split_port(server)
    options = (*(("-p", port) if port else ()),
               *(("-i", os.path.expanduser(key)) if key else ()), *args)
    with _opening:  # one opening at a time: two threads never make two connections
        with _lock:
            tunnel = _open.get((server, command, options))
        if tunnel is not None and not tunnel.closed:
            return tunnel  # (one whose connection died reopens at its next forward)
        tunnel = SSHTunnel(server, command, options).open()
        with _lock:
            _open[server, command, options] = tunnel
    return tunnel


def _split_port(server: str) -> tuple[str, str | None]:
    """``user@host:2222`` (ipyparallel's way to give a port) as ``(user@host, '2222')``."""
    name, colon, port = server.rpartition(":")
    if colon and port.isdigit() and name and "[" not in name and ":" not in name:
        return name, port
    return server, None


def furl_address(furl: str) -> tuple[str, int]:
    """``(host, port)`` of a FURL's first location hint."""
    match = re.match(r"pb://[^@/]+@(?:tcp:)?(\[[^\]]+\]|[^:,/]+):(\d+)", furl)
    if match is None:
        raise PlaitConnectionError("the FURL names no TCP address to tunnel to")
    return match.group(1).strip("[]"), int(match.group(2))


def use_tunnel(furl: str, tunnel: SSHTunnel) -> None:
    """From now on, reach the host ``furl`` names through ``tunnel`` (blocking:
    the FURL's own port is forwarded at once), until as many :func:`release`
    calls for it as there were of these."""
    host, port = furl_address(furl)
    tunnel.forward(host, port)
    with _lock:
        _via[host] = tunnel
        _users[host] = _users.get(host, 0) + 1


def release(furl: str) -> None:
    """One user of the route to ``furl``'s host is done (a client closed); the
    last one's going ends the route, so that the host is dialled directly again."""
    host, _ = furl_address(furl)
    with _lock:
        left = _users.get(host, 0) - 1
        if left > 0:
            _users[host] = left
            return
        _users.pop(host, None)
        _via.pop(host, None)


def close_all() -> None:
    """Close every tunnel of this process (before it exits without atexit)."""
    with _lock:
        tunnels = list(set(_open.values()) | set(_via.values()))
    for tunnel in tunnels:
        tunnel.close()


def routed(host: str) -> bool:
    """Whether connections to ``host`` go through a tunnel."""
    return host in _via


def route(host: str, port: int) -> tuple[str, int]:
    """Where to dial to reach ``host:port``: itself, or a tunnel's local end."""
    if not _via:
        return host, port
    tunnel = _via.get(host)
    if tunnel is None or (host == "127.0.0.1" and port in tunnel.local_ports):
        return host, port
    return "127.0.0.1", tunnel.forward(host, port)


def route_furl(furl: str) -> str:
    """``furl``, or the same FURL naming the tunnel's local end when its host is
    reached through a tunnel (the tub id and secret are kept: TLS still checks
    that the far end is the controller the FURL names)."""
    if not _via:
        return furl
    host, port = furl_address(furl)
    if host not in _via:
        return furl
    local_host, local_port = route(host, port)
    tub_id, rest = furl[len("pb://"):].split("@", 1)
    return f"pb://{tub_id}@tcp:{local_host}:{local_port}/{rest.split('/', 1)[1]}"
