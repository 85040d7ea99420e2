"""A process that imports what engines need once, then forks them.

Starting a Python process that imports Twisted, foolscap, pyOpenSSL and
cryptography costs about 0.4 s of CPU.  A local cluster starts faster when
one process makes those imports and forks the engines, which then cost a
fork each, while the controller starts beside it on another core.
:mod:`plait.cluster.launchers` drives it on standard input and output, a
line each::

    engines N ARGS-JSON    fork N ipengines, which wait for the engine FURL
                           -> N lines "pid engine PID"
    furl FURL              hand the engine FURL to the engines waiting for it
    (end of input)         exit; the engines go on

With ``--relay`` (an SSH launcher, whose engines are on another host) it
also collects the engines' ``engine ID PID`` notices on an abstract unix
socket of its own host and writes them to its standard output, where the
launcher reads them through SSH.

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
import socket
import sys

import plait.kernel.engine.process  # noqa: F401  (what every engine imports)
from plait.cluster.launchers import peer_pid
from plait.scripts import ipengine


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


def _handle(line: str, detach: bool, relay: _Relay | None, waiting: list[int]) -> None:
    word, _, rest = line.strip().partition(" ")
    if word == "engines":
        count, _, args = rest.partition(" ")
        arglist = json.loads(args)
        if relay is not None:
            arglist.append(f"--notify-socket=@{relay.name}")
        for _ in range(int(count)):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(w)
                for fd in waiting:
                    os.close(fd)
                if relay is not None:
                    relay.sock.close()
                    for conn in relay.buffers:
                        conn.close()
                for sel in _SELECTOR:
                    sel.close()
                _child(detach, r)
                _run(["--furl-file=-", *arglist])
            os.close(r)
            waiting.append(w)
            os.write(1, f"pid engine {pid}\n".encode())
    elif word == "furl":
        for fd in waiting:
            try:
                os.write(fd, (rest + "\n").encode())
            except OSError:
                pass  # that engine died: the launcher sees it
            os.close(fd)
        waiting.clear()


def main() -> int:
    detach = "--detach" in sys.argv[1:]
    relay = _Relay() if "--relay" in sys.argv[1:] else None
    waiting: list[int] = []  # write ends of the pipes engines read their FURL from
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
                    _handle(line.decode(), detach, relay, waiting)
            elif relay is not None:
                relay.ready(sel, key)
    for fd in waiting:
        os.close(fd)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
