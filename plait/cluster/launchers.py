"""How a cluster's processes start: the controller, and engines on this host or
under ``mpiexec``.

Readiness is event-driven.  The controller writes ``ready FURL-PATH`` on a
pipe (``--notify-fd``).  Engines announce ``engine ID PID`` on a listening
unix socket of the launcher once registered (``--notify-socket``): the socket
lives in Linux's abstract namespace under a random name, so it needs no
folder and reaches engines that ``mpiexec`` started, whatever descriptors
it closes.  While it waits, the launcher also watches each process it
started (a pidfd): one that exits before its engines registered is an
error at once, not a timeout.

Local engines are started before the controller is ready and are handed the
engine FURL on standard input, so that their imports overlap the
controller's start.  Engines under ``mpiexec`` read the profile's engine
FURL file (standard input reaches only rank 0); ``mpiexec``'s own output
goes to a log file in the profile's log folder, quoted when it fails.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plait.cluster.processes import pid_alive, signal_pids, terminate
from plait.security import ENGINE_FURL, ProfileDirs
from plait.wire.errors import ClusterError

#: Seconds the notices of this host's engines may take once the controller
#: counted every engine (engines of other hosts send none).
NOTICE_GRACE = 0.5

#: The ways engines start, for ``engines=`` and ``--engines``.
LAUNCHERS = ("local", "mpi", "ssh", "slurm", "sge", "pbs", "lsf")
BATCH = ("slurm", "sge", "pbs", "lsf")


@dataclass
class EngineSet:
    """Engines started together: their ids and pids once registered, and the
    ``mpiexec`` that runs them, if any."""

    launcher: str
    n: int
    ids: list[int] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    launcher_pid: int | None = None
    log: Path | None = None
    procs: list[Any] = field(default_factory=list, repr=False)  # Popen or Forked
    host: str | None = None  # ssh: the host the engines run on (their pids are its)
    ssh: list[str] = field(default_factory=list)  # ssh: the command reaching the host
    forked: list[int] = field(default_factory=list)  # ssh: every pid the remote fork server made
    job: str | None = None  # a batch system's job id
    supervised: bool = False  # the launcher (a fork server) restarts engines that die
    # ssh, supervised: a word in the command line of the host's fork server, which
    # its engines (forks) share: what finds them all, whatever their pids now
    tag: str | None = None

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"launcher": self.launcher, "ids": list(self.ids),
                                 "pids": list(self.pids)}
        if self.launcher_pid is not None:
            state["launcher_pid"] = self.launcher_pid
        if self.host is not None:
            state["host"], state["ssh"] = self.host, list(self.ssh)
        if self.job is not None:
            state["job"] = self.job
        if self.supervised:
            state["supervised"] = True
        if self.tag is not None:
            state["tag"] = self.tag
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EngineSet:
        return cls(state.get("launcher", "local"), len(state.get("pids", [])),
                   list(state.get("ids", [])), list(state.get("pids", [])),
                   state.get("launcher_pid"), host=state.get("host"),
                   ssh=list(state.get("ssh", [])), job=state.get("job"),
                   supervised=bool(state.get("supervised")), tag=state.get("tag"))

    def signal(self, sig: int, pids: list[int] | None = None) -> list[int]:
        """Send ``sig`` to the engines (``pids`` of them, else all); the pids signalled."""
        if self.launcher in BATCH:
            if self.launcher != "slurm":
                raise ClusterError(f"signals reach {self.launcher} engines only through "
                                   f"the scheduler: not supported")
            subprocess.run(["scancel", f"--signal={int(sig)}", "--full", str(self.job)],
                           capture_output=True, timeout=30)
            return []
        if self.supervised:
            raise ClusterError("engines that are restarted when they die get new pids: "
                               "signal them through the controller (rc.send_signal)")
        pids = list(self.pids if pids is None else pids)
        if self.launcher != "ssh":
            return signal_pids(pids, sig)
        if pids:
            _remote(self, f"kill -{int(sig)} {' '.join(map(str, pids))} 2>/dev/null; true")
        return pids

    def _stop_remote(self, pids: list[int]) -> None:
        """SIGTERM the remote ``pids``, then SIGKILL those still there after 3 s."""
        if not pids:
            return
        listed = " ".join(map(str, pids))
        _remote(self, f"kill -15 {listed} 2>/dev/null; for i in $(seq 30); do "
                      f"kill -0 {listed} 2>/dev/null || exit 0; sleep 0.1; done; "
                      f"kill -9 {listed} 2>/dev/null; true")

    def _stop_supervisor(self) -> None:
        """(SSH, supervised) SIGTERM the host's supervisor, if it is ours still (its
        command line has our tag), which stops its engines; then SIGKILL whatever
        carries the tag: the supervisor past its grace, engines it left (it died,
        or never took over), never a stranger that got a recorded pid."""
        if self.tag is None:  # (a state written without a tag: the pids are all we
            # know; the supervisor's first, or it would start what is stopped again)
            first = [] if self.launcher_pid is None else [self.launcher_pid]
            self._stop_remote(list(dict.fromkeys([*first, *self.pids, *self.forked])))
            return
        # ("--ta[g]=": a pattern that does not match this shell's own command line)
        pattern = shlex.quote("--ta[g]=" + self.tag.removeprefix("--tag="))
        sup = self.launcher_pid
        term = "" if sup is None else (
            f"if tr '\\0' ' ' < /proc/{sup}/cmdline 2>/dev/null | grep -q -- {pattern}; "
            f"then kill -15 {sup}; for i in $(seq 50); do kill -0 {sup} 2>/dev/null "
            f"|| break; sleep 0.1; done; fi; ")
        _remote(self, f"{term}pkill -9 -f -- {pattern}; true")

    def stop(self, pids: list[int] | None = None) -> None:
        """Stop the engines (``pids`` of them, else all, and their launcher)."""
        if self.launcher in BATCH:
            if pids is not None:
                raise ClusterError("the engines of one batch job stop together")
            if self.job is not None:
                from plait.cluster.batch import BatchJob

                BatchJob(self.launcher, self.job, self.n, Path()).cancel()
            return
        if self.supervised:
            if pids is not None:
                raise ClusterError("engines that are restarted when they die stop together")
            if self.launcher == "ssh":
                self._stop_supervisor()
                return
            if self.launcher_pid is not None and pid_alive(self.launcher_pid):
                # first: it would restart what is stopped; it stops its engines as it
                # goes (their pids, new since restarts, are its to know)
                terminate([self.launcher_pid])
                return
            terminate(self.all_pids())  # it died: its engines are orphans, stopped here
            return
        if self.launcher != "ssh":
            terminate(self.all_pids() if pids is None else pids)
            return
        self._stop_remote(list(dict.fromkeys([*self.pids, *self.forked])) if pids is None
                          else pids)
        if pids is None:
            for proc in self.procs:  # the ssh sessions, if still there
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def all_pids(self) -> list[int]:
        """The engines' pids, then the launcher's (stopped last)."""
        pids = list(dict.fromkeys([*self.pids, *(p.pid for p in self.procs
                                                 if p.pid != self.launcher_pid)]))
        return pids + ([self.launcher_pid] if self.launcher_pid is not None else [])


def _command(module: str, profile: str | None, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", module]
    if profile:
        cmd.append(f"--profile={profile}")
    return cmd + extra


class Forked:
    """A process the fork server started (not a child of ours): what the launchers
    need of a Popen.  Its exit code is unknown (``poll`` says -1 once it exited)."""

    stdin = None

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        return None if pid_alive(self.pid) else -1

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until it exits (at most ``timeout`` seconds); ``poll()`` then."""
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return -1
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                sel.select(timeout)
        finally:
            os.close(fd)
        return self.poll()


class ForkServer:
    """The fork server (:mod:`plait.scripts._zygote`): engines forked from one
    process that made their imports once."""

    def __init__(self, detach: bool):
        self.supervising = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "plait.scripts._zygote", *(["--detach"] if detach else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if detach else None, start_new_session=detach,
        )

    def _ask(self, line: str, count: int, deadline: float, late: str = "") -> list[Forked]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            raise ClusterError("the fork server exited") from None
        out: list[Forked] = []
        fd = self.proc.stdout.fileno()
        buffer = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while len(out) < count:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise ClusterError(late or "the fork server did not answer in time")
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise ClusterError(f"the fork server exited (code {self.proc.wait()})")
                buffer += chunk
                while b"\n" in buffer and len(out) < count:
                    text, buffer = buffer.split(b"\n", 1)
                    out.append(Forked(int(text.split()[-1])))
        return out

    def engines(self, n: int, profile: str | None, args: list[str], deadline: float,
                late: str = "") -> list[Forked]:
        """Fork ``n`` engines; ClusterError ``late`` when ``deadline`` passes first."""
        return self._ask(f"engines {n} {json.dumps(_profile(profile) + args)}", n, deadline,
                         late)

    def supervise(self) -> None:
        """(Before :meth:`engines`) Stay after :meth:`close`, replacing the engines
        that die by new ones taking their ids (see :mod:`plait.scripts._zygote`)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"supervise\n")
        self.proc.stdin.flush()
        self.supervising = True

    def secrets(self, secrets_: list[str]) -> None:
        """(Before :meth:`engines`) The enrollment secrets of the engines forked next."""
        assert self.proc.stdin is not None
        if secrets_:
            self.proc.stdin.write(f"secrets {' '.join(secrets_)}\n".encode())
            self.proc.stdin.flush()

    def furl(self, furl: str) -> None:
        """Hand the engines forked so far the engine FURL."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"furl {furl}\n".encode())
        self.proc.stdin.flush()

    def close(self) -> None:
        """Let the fork server exit (what it forked goes on); a supervising one goes
        on too, until SIGTERM."""
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if self.supervising:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _profile(profile: str | None) -> list[str]:
    return [f"--profile={profile}"] if profile else []


def spawn_controller(profile: str | None, args: list[str], detach: bool
                     ) -> tuple[subprocess.Popen, int]:
    """Start ``ipcontroller``; returns it and the pipe its ``ready`` line comes on."""
    r, w = os.pipe()
    proc = subprocess.Popen(
        _command("plait.scripts.ipcontroller", profile, [f"--notify-fd={w}", *args]),
        pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if detach else None, start_new_session=detach,
    )
    os.close(w)
    return proc, r


def spawn_keeper(profile: str | None, args: list[str], pid: int | None) -> int:
    """Start the keeper of controller ``pid`` (:mod:`plait.cluster.keeper`),
    detached; its pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "plait.cluster.keeper", f"--pid={pid}", *_profile(profile),
         "--", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc.pid


def read_ready(fd: int, proc: Any, deadline: float, dirs: ProfileDirs) -> Path:
    """The engine FURL file the controller names once ready; ClusterError otherwise."""
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        try:
            while not data.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise ClusterError(f"the controller was not ready in time; see its log "
                                       f"in {dirs.log}")
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
    line = data.decode().strip()
    if not line.startswith("ready "):
        code = proc.poll()
        why = "no ready notice" if code is None else f"it exited with code {code}"
        raise ClusterError(f"the controller did not start ({why}); see its log in {dirs.log}"
                           + _quote(dirs.log / f"ipcontroller-{proc.pid}.log", 5))
    return Path(line.split(" ", 1)[1])


class Notices:
    """The socket engines announce themselves on, and the wait for them."""

    def __init__(self) -> None:
        self.name = "plait-" + secrets.token_hex(16)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind("\0" + self.name)
        self.sock.listen(256)
        self.sock.setblocking(False)

    @property
    def arg(self) -> str:
        """The ``--notify-socket`` value for engines (``@`` names an abstract socket)."""
        return "@" + self.name

    def close(self) -> None:
        self.sock.close()

    def wait(self, engines: EngineSet, deadline: float, timeout: float, dirs: ProfileDirs,
             new_ids: Callable[[], list[int]] | None = None) -> None:
        """Fill ``engines.ids`` and ``.pids`` as its ``n`` engines register.

        ``new_ids()``, if given, asks the controller which engines registered
        since these started (every 0.2 s): engines on other hosts (the ranks
        of an mpiexec over several nodes) cannot reach this socket, so once
        the controller counts them all, they are ready, whatever notices came.
        ClusterError when a process it started exits first (saying which, and
        where its log is) or at ``deadline`` (saying how many registered).
        """
        sel = selectors.DefaultSelector()
        pidfds: list[int] = []
        buffers: dict[socket.socket, bytes] = {}
        senders: dict[socket.socket, int] = {}
        try:
            sel.register(self.sock, selectors.EVENT_READ, "accept")
            for proc in engines.procs:
                try:
                    fd = os.pidfd_open(proc.pid)
                except (OSError, AttributeError):
                    continue  # no pidfds: a death shows as the timeout
                pidfds.append(fd)
                sel.register(fd, selectors.EVENT_READ, proc)
            counted: list[int] = []
            settled_by = 0.0  # once the controller counted them all: notices still due
            while len(engines.ids) < engines.n:
                left = deadline - time.monotonic()
                if new_ids is not None and not counted:
                    counted = new_ids()
                    if len(counted) >= engines.n:
                        # the notices of this host's engines follow within moments;
                        # those of other hosts' never come
                        settled_by = time.monotonic() + NOTICE_GRACE
                    else:
                        counted = []
                if counted and time.monotonic() >= settled_by:
                    engines.ids = sorted(counted)[:engines.n]
                    break
                if left <= 0:
                    raise ClusterError(
                        f"only {len(engines.ids)} of {engines.n} engines registered within "
                        f"{timeout:g} s; see the logs in {dirs.log}"
                        + _quote(_engine_log(engines, dirs)))
                step = left if new_ids is None else min(left, 0.2)
                if counted:
                    step = max(0.0, min(step, settled_by - time.monotonic()))
                for key, _ in sel.select(step):
                    if key.data == "accept":
                        try:
                            conn, _ = self.sock.accept()
                        except BlockingIOError:
                            continue
                        sender = peer_pid(conn)
                        if sender is None:  # another user's process
                            conn.close()
                            continue
                        conn.setblocking(False)
                        buffers[conn] = b""
                        senders[conn] = sender
                        sel.register(conn, selectors.EVENT_READ, "notice")
                    elif key.data == "notice":
                        conn = key.fileobj  # type: ignore[assignment]
                        assert isinstance(conn, socket.socket)
                        chunk = conn.recv(256)
                        buffers[conn] += chunk
                        if chunk and len(buffers[conn]) < 256:
                            continue
                        sel.unregister(conn)
                        conn.close()
                        _record(engines, buffers.pop(conn), senders.pop(conn, None))
                    else:
                        proc = key.data
                        sel.unregister(key.fd)
                        code = proc.wait()
                        what = ("mpiexec" if engines.launcher == "mpi"
                                else f"an engine (pid {proc.pid})")
                        how = "" if code is None or code < 0 else f" with code {code}"
                        raise ClusterError(
                            f"{what} exited{how} before "
                            f"{'its engines' if engines.launcher == 'mpi' else 'it'} "
                            f"registered ({len(engines.ids)} of {engines.n} did); see the "
                            f"logs in {dirs.log}" + _quote(_engine_log(engines, dirs, proc.pid)))
        finally:
            for conn in buffers:
                conn.close()
            sel.close()
            for fd in pidfds:
                os.close(fd)


def peer_pid(conn: socket.socket) -> int | None:
    """The pid of the process of this user at the other end of the unix socket
    ``conn``; None for another user's (an abstract socket has no permissions: its
    notices are believed only from the user's own processes, as they say)."""
    import struct

    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, _ = struct.unpack("3i", creds)
    return pid if uid == os.getuid() else None


def _record(engines: EngineSet, data: bytes, sender: int | None = None) -> None:
    """Note the notice ``engine ID PID`` in ``data``, if ``sender`` (when known) is PID."""
    parts = data.decode(errors="replace").split()
    if len(parts) == 3 and parts[0] == "engine" and parts[1].isdigit() and parts[2].isdigit():
        if sender is not None and sender != int(parts[2]):
            return  # a notice for another process: not believed
        engines.ids.append(int(parts[1]))
        engines.pids.append(int(parts[2]))


def _engine_log(engines: EngineSet, dirs: ProfileDirs, pid: int | None = None) -> Path | None:
    """The log to quote for ``engines``: their launcher's, else the log of the engine
    ``pid`` (else of the one of them that wrote last)."""
    if engines.log is not None:
        return engines.log
    pids = [pid] if pid is not None else [p.pid for p in engines.procs]
    logs = [dirs.log / f"ipengine-{p}.log" for p in pids]
    found = [log for log in logs if log.exists()]
    return max(found, key=lambda log: log.stat().st_mtime) if found else None


def _quote(log: Path | None, lines: int = 10) -> str:
    """The end of a launcher's log, to quote in an error (empty when there is none)."""
    if log is None:
        return ""
    try:
        tail = log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return f"; {log.name} says:\n    " + "\n    ".join(tail) if tail else ""


def find_mpiexec(mpiexec: str) -> str:
    """The path of ``mpiexec``; ClusterError saying how to get one when missing."""
    path = shutil.which(mpiexec)
    if path is None:
        raise ClusterError(
            f"cannot start MPI engines: {mpiexec!r} is not found (install Open MPI or MPICH, "
            f"e.g. apt-get install openmpi-bin, or name the launcher with mpiexec=...)")
    return path


def spawn_mpi(n: int, profile: str | None, notices: Notices, dirs: ProfileDirs,
              mpiexec: str = "mpiexec", args: tuple[str, ...] = (), detach: bool = True,
              enroll_file: Path | None = None) -> EngineSet:
    """Start ``n`` engines as one ``mpiexec -n N`` job (the controller must be ready:
    they read the profile's engine FURL file; with ``enroll_file``, each rank its
    line of that secrets file)."""
    path = find_mpiexec(mpiexec)
    flags = list(args)
    if _is_open_mpi(path):
        if os.geteuid() == 0 and "--allow-run-as-root" not in flags:
            flags.append("--allow-run-as-root")  # Open MPI refuses root without it
    log = dirs.log / f"mpiexec-{os.getpid()}-{secrets.token_hex(3)}.log"
    engine = _command("plait.scripts.ipengine", profile,
                      [f"--furl-file={dirs.furl_path(ENGINE_FURL)}",
                       f"--notify-socket={notices.arg}",
                       *([f"--enroll-file={enroll_file}", "--enroll-slot=rank"]
                         if enroll_file else [])])
    with open(log, "ab") as out:
        proc = subprocess.Popen([path, *flags, "-n", str(n), *engine],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=detach)
    engines = EngineSet("mpi", n, launcher_pid=proc.pid, log=log)
    engines.procs.append(proc)
    return engines


def _is_open_mpi(path: str) -> bool:
    real = os.path.realpath(path)
    if "openmpi" in real or os.path.basename(real) in ("orterun", "prterun"):
        return True
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "Open MPI" in out.stdout + out.stderr or "OpenRTE" in out.stdout + out.stderr


# -- SSH ---------------------------------------------------------------------------------
def _remote(group: EngineSet, command: str, timeout: float = 30) -> None:
    """Run the shell ``command`` on ``group``'s host (errors are the caller's to ignore)."""
    try:
        subprocess.run([*group.ssh, command], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        pass


def ssh_prefix(host: str, command: str = "ssh", args: tuple[str, ...] = ()) -> list[str]:
    """The command line that runs a shell command on ``host``, without a password prompt.
    ClusterError for a host name ssh would take for an option."""
    if not host or host.startswith("-") or any(c.isspace() for c in host):
        raise ClusterError(f"{host!r} is not a host name")
    return [*shlex.split(command), "-o", "BatchMode=yes", *args, "--", host]


def spawn_ssh(hosts: dict[str, int], profile: str | None, furl: str, dirs: ProfileDirs,
              deadline: float, timeout: float, *, command: str = "ssh",
              args: tuple[str, ...] = (), python: str | None = None,
              plait_dir: str | None = None, reconnect: float = 60.0,
              engine_args: tuple[str, ...] = (),
              issue: Callable[[int], list[str]] | None = None,
              supervise: bool = False) -> list[EngineSet]:
    """Start ``hosts[host]`` engines on each host, through one SSH session per host
    running the fork server there; returns once every engine registered.

    The engine FURL travels in the SSH session, to the fork server's standard
    input: it is never written on the remote host, nor put on a command line;
    so do the engines' enrollment secrets (``issue(n)``: ``n`` new ones).
    An engine that loses the controller (a network cut) tries to join it
    again for ``reconnect`` seconds, keeping its namespace.  ``engine_args``: more
    ipengine flags (``--ssh=...``, a tunnel to the controller).
    The engines' notices come back the same way.  ClusterError (with what
    was started stopped) when a session fails, saying which host and quoting
    ssh's message, or at ``deadline``.  ``supervise``: the fork server of each
    host stays there, replacing its engines that die under their ids (its
    pid, that host's, is the set's ``launcher_pid``).
    """
    base = [python or sys.executable, "-m", "plait.scripts._zygote", "--relay", "--detach"]
    if plait_dir:
        base = ["env", f"PLAIT_DIR={plait_dir}", *base]
    groups: list[EngineSet] = []
    try:
        for host, n in hosts.items():
            if not (isinstance(n, int) and n >= 1):
                raise ClusterError(f"the engines of host {host!r} must be an int >= 1, not {n!r}")
            prefix = ssh_prefix(host, command, args)
            log = dirs.log / f"ssh-{_safe(host)}-{os.getpid()}-{secrets.token_hex(3)}.log"
            tag = f"--tag=plait-{secrets.token_hex(8)}" if supervise else None
            remote = [*base, tag] if tag else base
            with open(log, "ab") as err:
                proc = subprocess.Popen([*prefix, shlex.join(remote)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=err,
                                        start_new_session=True)
            group = EngineSet("ssh", n, log=log, host=host, ssh=prefix, tag=tag)
            group.procs.append(proc)
            groups.append(group)
            assert proc.stdin is not None
            argv = [*_profile(profile), f"--reconnect={reconnect:g}", *engine_args]
            secrets_ = f"secrets {' '.join(issue(n))}\n" if issue is not None else ""
            supervising = "supervise\n" if supervise else ""
            proc.stdin.write(f"{supervising}{secrets_}engines {n} {json.dumps(argv)}\n"
                             f"furl {furl}\n".encode())
            proc.stdin.flush()
        _wait_ssh(groups, deadline, timeout, dirs)
    except BaseException:
        for group in groups:
            group.supervised = supervise  # (its fork server would restart what is stopped
            group.stop()                  # by pid: all that has its tag goes at once)
        raise
    if supervise:  # each fork server hands over to its supervisor, and says its pid
        try:
            _take_supervisors(groups, deadline, timeout)
        except BaseException:
            for group in groups:
                group.stop()
            raise
    for group in groups:  # the fork servers exit, and so do their sessions; engines go on
        proc = group.procs[0]
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
    for group in groups:
        try:
            group.procs[0].wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass  # stop() ends it
    return groups


def _take_supervisors(groups: list[EngineSet], deadline: float, timeout: float) -> None:
    """End the fork servers' input and read each one's ``supervisor PID``."""
    for group in groups:
        stdin = group.procs[0].stdin
        try:
            stdin.close()
        except OSError:
            pass
    for group in groups:
        group.supervised = True  # (from now on, however this ends: stopped by its tag)
    for group in groups:
        out = group.procs[0].stdout
        left = max(HANDOVER, deadline - time.monotonic())
        with selectors.DefaultSelector() as sel:
            sel.register(out.fileno(), selectors.EVENT_READ)
            data = b""
            while b"supervisor " not in data or not data.endswith(b"\n"):
                if not sel.select(left):
                    raise ClusterError(f"the fork server on {group.host} did not say within "
                                       f"{timeout:g} s that it supervises its engines"
                                       + _quote(group.log, 5))
                chunk = os.read(out.fileno(), 4096)
                if not chunk:
                    break
                data += chunk
        words = [line.split() for line in data.decode(errors="replace").splitlines()]
        pid = next((int(w[1]) for w in words if len(w) == 2 and w[0] == "supervisor"
                    and w[1].isdigit()), None)
        if pid is None:
            raise ClusterError(f"the fork server on {group.host} ended without supervising "
                               f"its engines" + _quote(group.log, 5))
        group.launcher_pid = pid


#: Seconds a fork server over SSH has to say it supervises, past the engines' deadline.
HANDOVER = 10.0


def _safe(host: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in host)


def _wait_ssh(groups: list[EngineSet], deadline: float, timeout: float, dirs: ProfileDirs
              ) -> None:
    """Read each session's ``pid engine PID`` and ``engine ID PID`` lines until
    every engine registered."""
    buffers: dict[int, bytes] = {}
    by_fd: dict[int, EngineSet] = {}
    with selectors.DefaultSelector() as sel:
        for group in groups:
            out = group.procs[0].stdout
            by_fd[out.fileno()] = group
            buffers[out.fileno()] = b""
            sel.register(out.fileno(), selectors.EVENT_READ)
        while any(len(g.ids) < g.n for g in groups):
            left = deadline - time.monotonic()
            if left <= 0:
                late = [f"{g.host}: {len(g.ids)} of {g.n}" for g in groups if len(g.ids) < g.n]
                raise ClusterError(f"not every engine registered within {timeout:g} s "
                                   f"({'; '.join(late)}); see the logs in {dirs.log}")
            for key, _ in sel.select(left):
                group = by_fd[key.fd]
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    code = group.procs[0].wait()
                    if len(group.ids) < group.n:
                        raise ClusterError(
                            f"the SSH session to {group.host} ended (code {code}) before its "
                            f"engines registered ({len(group.ids)} of {group.n} did)"
                            + _quote(group.log, 5))
                    continue
                buffers[key.fd] += chunk
                while b"\n" in buffers[key.fd]:
                    line, buffers[key.fd] = buffers[key.fd].split(b"\n", 1)
                    parts = line.decode(errors="replace").split()
                    if parts[:2] == ["pid", "engine"] and len(parts) == 3:
                        group.forked.append(int(parts[2]))
                    elif parts[:1] == ["engine"]:
                        _record(group, line)
