"""A process that imports what engines need once, then forks them.

Starting a Python process that imports Twisted, foolscap, pyOpenSSL and
cryptography costs about 0.4 s of CPU.  A local cluster starts faster when
one process makes those imports and forks the engines, which then cost a
fork each, while the controller starts beside it on another core.
:mod:`plait.cluster.launchers` drives it on standard input and output, a
line each::

    engines N ARGS-JSON    fork N ipengines, which wait for the engine FURL
                           -> N lines "pid engine PID"
    secrets S1 S2 ...      (before ``engines``) one-time enrollment secrets, one
                           for each engine forked next (see plait.wire.enrollment)
    furl FURL              hand the engine FURL to the engines waiting for it, with
                           each one's secret and member key
    supervise              (before ``engines``) stay after the end of input, and
                           replace an engine that dies by a new one taking its id
                           (with ``--relay``: -> "supervisor PID", see below)
    (end of input)         exit; the engines go on

With ``--relay`` (an SSH launcher, whose engines are on another host) it
also collects the engines' ``engine ID PID`` notices on an abstract unix
socket of its own host and writes them to its standard output, where the
launcher reads them through SSH.

Supervising (``Cluster(restart_engines=True)``, ``ipcluster start
--restart-engines``): each engine reports its id on a pipe of its own once
registered, and the fork server watches its engines' pidfds.  One that exits
after it registered is forked again at once (a fork: milliseconds), with
``--engine-id`` so that the controller gives it the same id, and the member
key of the engine it replaces (the fork server made it, and keeps it in its
memory only), which admits the claim without a new secret.  One that dies
before registering, or that has died :data:`MAX_RESTARTS` times within
:data:`RESTART_WINDOW` seconds, is not restarted (it would only die again).
SIGTERM stops the supervision: the engines get SIGTERM, then the fork server
exits.  Over SSH (``--relay``) the fork server hands the supervision to a
child in a session of its own and exits, which ends the SSH session; that
child's pid, written as ``supervisor PID``, is what stopping signals.

The imports install Twisted's reactor, which never runs here; each child
gives its copy a poller and a waker of its own before anything uses them
(a poller shared by two processes would mix their events), and reseeds
:mod:`random`.  ``--detach`` gives each engine a session of its own.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import select
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import plait.kernel.engine.process  # noqa: F401  (what every engine imports)
from plait.cluster.launchers import peer_pid
from plait.scripts import ipengine
from plait.scripts._common import freeze_startup_objects
from plait.wire.enrollment import new_member


def _fresh_reactor() -> None:
    """Give this (forked) process's reactor a poller and a waker of its own."""
    from twisted.internet import reactor

    r: object = reactor
    assert not getattr(r, "running", False), "the zygote's reactor must never have run"
    old_waker = getattr(r, "waker", None)
    r._poller.close()  # type: ignore[attr-defined]
    r._poller = select.epoll(1024)  # type: ignore[attr-defined]
    for name in ("_reads", "_writes", "_selectables"):
        getattr(r, name).clear()
    if old_waker is not None:
        r._internalReaders.discard(old_waker)  # type: ignore[attr-defined]
        for end in ("i", "o"):  # the pipe of the zygote's waker: this copy's ends
            fd = getattr(old_waker, end, None)
            if isinstance(fd, int):
                try:
                    os.close(fd)
                except OSError:
                    pass
        r.waker = None  # type: ignore[attr-defined]
    r.installWaker()  # type: ignore[attr-defined]


def _child(detach: bool, stdin: int) -> None:
    """What a forked engine does first: its own reactor, random state and
    session, and standard input from ``stdin`` (where its FURL comes)."""
    _fresh_reactor()
    random.seed()
    if detach:
        os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(stdin, 0)
    os.dup2(devnull, 1)
    if detach:
        os.dup2(devnull, 2)
    os.close(devnull)
    os.close(stdin)
    sys.stdin = open(0, closefd=False)  # nothing the zygote's buffer read ahead


def _run(args: list[str]) -> None:
    try:
        code = ipengine.main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stderr.flush()
    os._exit(code or 0)


class _Relay:
    """Engine notices on an abstract unix socket of this host, relayed to stdout."""

    def __init__(self) -> None:
        self.name = "plait-relay-" + secrets.token_hex(12)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind("\0" + self.name)
        self.sock.listen(256)
        self.sock.setblocking(False)
        self.buffers: dict[socket.socket, bytes] = {}
        self.senders: dict[socket.socket, int] = {}

    def ready(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        if key.fileobj is self.sock:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            sender = peer_pid(conn)
            if sender is None:  # another user's process: its notices are not believed
                conn.close()
                return
            conn.setblocking(False)
            self.buffers[conn] = b""
            self.senders[conn] = sender
            sel.register(conn, selectors.EVENT_READ)
            return
        peer = key.fileobj
        assert isinstance(peer, socket.socket)
        conn = peer
        try:
            chunk = conn.recv(256)
        except OSError:
            chunk = b""
        self.buffers[conn] += chunk
        if chunk and len(self.buffers[conn]) < 256:
            return
        sel.unregister(conn)
        conn.close()
        text = self.buffers.pop(conn).decode(errors="replace").strip()
        sender = self.senders.pop(conn, None)
        parts = text.split()
        if len(parts) == 3 and parts[0] == "engine" and parts[2] == str(sender):
            os.write(1, (text + "\n").encode())


_SELECTOR: list[selectors.BaseSelector] = []  # the zygote's own, closed in each child

#: A slot whose engine died this many times within this many seconds is given up.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


@dataclass
class _Engine:
    """An engine this fork server made, as a supervisor knows it."""

    args: list[str]
    member: str = ""  # its member key (replacements show it to claim the id)
    reports: int | None = None  # the read end of the pipe it reports its id on
    engine_id: int | None = None
    deaths: list[float] = field(default_factory=list)


class _State:
    def __init__(self, detach: bool, relay: _Relay | None):
        self.detach = detach
        self.relay = relay
        # the write ends of the pipes engines read their FURL from, with what else
        # they are to read there (their secret and member key)
        self.waiting: list[tuple[int, str]] = []
        self.secrets: list[str] = []  # for the engines forked next
        self.supervise = False
        self.furl: str | None = None
        self.engines: dict[int, _Engine] = {}  # pid -> what it is (when supervising)

    def fork(self, args: list[str], slot: _Engine | None = None) -> int:
        """Fork one engine run with ``args``; its pid (it waits for its FURL)."""
        # its credentials, taken before the fork: the child keeps no one else's
        member = slot.member if slot is not None else new_member().decode()
        secret = self.secrets.pop(0) if slot is None and self.secrets else "-"
        r, w = os.pipe()
        reports = None
        if self.supervise:
            reports, report_w = os.pipe()
            args = [*args, f"--notify-fd={report_w}"]
        pid = os.fork()
        if pid == 0:
            os.close(w)
            if reports is not None:
                os.close(reports)
            for fd, _ in self.waiting:
                os.close(fd)
            for other in self.engines.values():
                if other.reports is not None:
                    os.close(other.reports)
            if self.relay is not None:
                self.relay.sock.close()
                for conn in self.relay.buffers:
                    conn.close()
            for sel in _SELECTOR:
                sel.close()
            self.secrets.clear()
            self.waiting.clear()
            for other in self.engines.values():
                other.member = ""
            _child(self.detach, r)
            _run(["--furl-file=-", *args])
        os.close(r)
        if reports is not None:
            os.close(report_w)
        engine = slot or _Engine(args=[a for a in args if not a.startswith("--notify-fd=")],
                                 member=member)
        engine.reports = reports
        if self.supervise:
            self.engines[pid] = engine
        # a replacement shows its slot's member key; a new engine a secret, if given
        credentials = f"{secret} {member}"
        if self.furl is not None:  # a replacement: its FURL at once
            _give_furl(w, self.furl, credentials)
        else:
            self.waiting.append((w, credentials))
        return pid


def _give_furl(fd: int, furl: str, credentials: str) -> None:
    try:
        os.write(fd, f"{furl} {credentials}\n".encode())
    except OSError:
        pass  # that engine died: the launcher (or the supervisor) sees it
    os.close(fd)


def _handle(line: str, state: _State) -> None:
    word, _, rest = line.strip().partition(" ")
    if word == "engines":
        count, _, args = rest.partition(" ")
        arglist = json.loads(args)
        if state.relay is not None:
            arglist.append(f"--notify-socket=@{state.relay.name}")
        for _ in range(int(count)):
            pid = state.fork(arglist)
            os.write(1, f"pid engine {pid}\n".encode())
    elif word == "secrets":
        state.secrets.extend(rest.split())
    elif word == "furl":
        state.furl = rest if state.supervise else None
        for fd, credentials in state.waiting:
            _give_furl(fd, rest, credentials)
        state.waiting.clear()
    elif word == "supervise":
        state.supervise = True


#: Seconds a supervising fork server that is stopped waits for its engines to exit.
STOP_GRACE = 2.0


def _stop(*args: object) -> None:
    raise SystemExit(0)  # (out of the select below, which SIGTERM interrupts)


def _supervise(state: _State) -> None:
    """Replace the engines that die (see the module documentation) until SIGTERM."""
    signal.signal(signal.SIGTERM, _stop)
    sel = selectors.DefaultSelector()
    _SELECTOR.append(sel)

    gone: list[int] = []  # engines that exited before their pidfd could be had

    def watch(pid: int, slot: _Engine) -> None:
        try:
            sel.register(os.pidfd_open(pid), selectors.EVENT_READ, ("exit", pid))
        except ProcessLookupError:
            gone.append(pid)
        if slot.reports is not None:
            sel.register(slot.reports, selectors.EVENT_READ, ("report", pid))

    def ended(pid: int) -> None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        slot = state.engines.pop(pid, None)
        if slot is None:
            return
        if slot.reports is not None:  # it died before it registered
            sel.unregister(slot.reports)
            os.close(slot.reports)
            slot.reports = None
        now = time.monotonic()
        slot.deaths = [t for t in slot.deaths if now - t < RESTART_WINDOW] + [now]
        if slot.engine_id is None or len(slot.deaths) > MAX_RESTARTS:
            print(f"plait fork server: an engine (pid {pid}, id {slot.engine_id}) died; "
                  f"not restarted", file=sys.stderr, flush=True)
            return
        # (the launcher's notices ended with the start: a replacement tells none)
        slot.args = [a for a in slot.args
                     if not a.startswith(("--engine-id=", "--notify-socket="))]
        slot.args.append(f"--engine-id={slot.engine_id}")
        watch(state.fork(slot.args, slot), slot)

    for pid, slot in list(state.engines.items()):
        watch(pid, slot)
    try:
        while state.engines:
            while gone:
                ended(gone.pop())
            for key, _ in sel.select():
                what, pid = key.data
                sel.unregister(key.fd)
                if what == "report":
                    data = os.read(key.fd, 256)
                    os.close(key.fd)
                    reporter = state.engines.get(pid)
                    if reporter is not None:
                        reporter.reports = None
                        words = data.decode(errors="replace").split()
                        if len(words) == 2 and words[0] == "engine" and words[1].isdigit():
                            reporter.engine_id = int(words[1])
                    continue
                os.close(key.fd)
                ended(pid)
    except SystemExit:
        for pid in list(state.engines):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        # they are ours: wait for them (SIGKILL past STOP_GRACE), so that whoever
        # stops the fork server knows its engines are gone once it is
        _reap(list(state.engines), STOP_GRACE)


def _reap(pids: list[int], grace: float) -> None:
    """Wait for the children ``pids`` to exit, ``grace`` seconds at most; then
    SIGKILL the others, and reap them all."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    with selectors.DefaultSelector() as sel:
        for fd in fds:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                sel.unregister(key.fd)
    for fd, pid in fds.items():
        try:
            os.kill(pid, signal.SIGKILL)  # (harmless once it exited: not reaped yet)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        os.close(fd)


def warm_up() -> None:
    """Run once here what every engine runs first as it connects: making a
    certificate and a TLS context (cryptography's and pyOpenSSL's first calls
    compile and cache, about 20 ms of CPU): the engines forked next find it done."""
    from foolscap import crypto

    from plait.security import make_tub

    try:
        cert = make_tub().myCertificate
        crypto.FoolscapContextFactory(  # type: ignore[attr-defined]
            privateKey=cert.privateKey.original, certificate=cert.original).getContext()
    except Exception:  # (only time is lost: each engine does it again)
        pass


def main() -> int:
    warm_up()
    freeze_startup_objects()  # before any fork: the engines' collections leave shared pages alone
    detach = "--detach" in sys.argv[1:]
    relay = _Relay() if "--relay" in sys.argv[1:] else None
    state = _State(detach, relay)
    sel = selectors.DefaultSelector()
    _SELECTOR.append(sel)
    sel.register(0, selectors.EVENT_READ)
    if relay is not None:
        sel.register(relay.sock, selectors.EVENT_READ)
    pending = b""
    open_input = True
    while open_input:  # (a launcher with a relay keeps it open until the notices came)
        for key, _ in sel.select():
            if key.fileobj == 0:
                chunk = os.read(0, 65536)
                if not chunk:
                    open_input = False
                    sel.unregister(0)
                    break
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    _handle(line.decode(), state)
            elif relay is not None:
                relay.ready(sel, key)
    for fd, _ in state.waiting:
        os.close(fd)
    if state.supervise:
        sel.close()
        _SELECTOR.remove(sel)
        if relay is not None:  # another host's: the SSH session must end, we stay
            _leave_session(state)
        devnull = os.open(os.devnull, os.O_WRONLY)  # the launcher no longer reads fd 1
        os.dup2(devnull, 1)  # (kept open: a closed 1 would be reused by the next fd)
        os.close(devnull)
        _supervise(state)
    return 0


def _leave_session(state: _State) -> None:
    """(A supervising fork server run over SSH, once its input ended.) Fork the
    supervisor, tell the launcher its pid (``supervisor PID``: what stopping the
    engines signals) and exit, so that the SSH session ends; the supervisor runs
    on in a session of its own, its standard streams on /dev/null.  The engines
    forked so far are then not its children: it watches them by pidfd all the
    same, and their replacements are its own."""
    assert state.relay is not None
    state.relay.sock.close()
    for conn in state.relay.buffers:
        conn.close()
    state.relay = None
    pid = os.fork()
    if pid:
        os.write(1, f"supervisor {pid}\n".encode())
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
