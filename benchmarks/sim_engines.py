"""Many engines at the protocol level: thousands on one controller, from a few processes.

``python sim_engines.py FURL_FILE COUNT`` registers COUNT engines with the
controller whose engine FURL is in FURL_FILE, over one TLS connection (one
foolscap Tub), and serves them until its standard input closes.  Each is a
real :class:`~plait.adapters.engine_server.FoolscapEngine` with its own uuid
and registration, whose commands and tasks are run for real by
:class:`~plait.kernel.engine.commands.Commands` on one interpreter that the
engines of the process share (their namespaces are one: what is measured is
the controller, its registry and its scheduler, not user code).  It prints
``registered N`` once all are, and ``failed WHY`` if it cannot.

:func:`simulate` starts such processes for a controller and returns once
every engine is registered; ``plait_bench`` measures with it (``sim_*``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid as uuid_module
from pathlib import Path
from typing import Any


def _serve(furl_file: str, count: int) -> None:
    from twisted.internet import defer, reactor
    from zope.interface import implementer

    from plait.adapters.engine_server import FoolscapEngine
    from plait.interfaces.engine import IEngineServer
    from plait.kernel.engine.commands import Commands
    from plait.kernel.engine.interpreter import Interpreter
    from plait.security import make_tub, read_furl
    from plait.wire.serialize import dumps_plain

    interpreter = Interpreter()
    commands = Commands(interpreter, lambda size, readers: (b"", b"", None),
                        lambda props: None)

    @implementer(IEngineServer)
    class Simulated:
        """One engine: its commands run at once, in the reactor thread."""

        def call(self, method: str, args: tuple) -> Any:
            return commands.run(method, args)

        def submit(self, method: str, args: tuple) -> defer.Deferred:
            return defer.succeed(commands.run(method, args))

        def kill(self) -> None:
            pass

        def skip_tasks(self, taskids: list[int]) -> None:
            pass

        def send_signal(self, signum: int) -> None:
            pass

    tub = make_tub(keepaliveTimeout=60, disconnectTimeout=600)
    tub.startService()
    props = dumps_plain({})
    keep: list[Any] = []  # (the engines and their sessions live as long as this process)

    @defer.inlineCallbacks
    def register() -> Any:
        registrar = yield tub.getReference(read_furl(furl_file))
        calls = []
        for _ in range(count):
            engine = FoolscapEngine(Simulated())
            keep.append(engine)
            calls.append(registrar.callRemote("register_engine", engine,
                                              str(uuid_module.uuid4()), props, b""))
        answers = yield defer.gatherResults(calls, consumeErrors=True)
        keep.extend(answers)
        print(f"registered {len(answers)}", flush=True)

    def failed(failure: Any) -> None:
        print(f"failed {failure.getErrorMessage()}", flush=True)
        reactor.stop()

    def stdin_closed() -> None:  # the benchmark is done with these engines
        sys.stdin.read()
        reactor.callFromThread(reactor.stop)

    reactor.callWhenRunning(lambda: register().addErrback(failed))
    reactor.callInThread(stdin_closed)
    reactor.run()


class Simulation:
    """Simulator processes serving ``n`` engines of a controller; :meth:`stop` ends them."""

    def __init__(self, furl_file: Path, n: int, processes: int = 4, env: dict | None = None):
        self.procs: list[subprocess.Popen] = []
        share = [n // processes + (1 if k < n % processes else 0) for k in range(processes)]
        for count in share:
            if count:
                self.procs.append(subprocess.Popen(
                    [sys.executable, __file__, str(furl_file), str(count)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                    env=env or dict(os.environ)))

    def wait_registered(self) -> int:
        """How many engines registered, once every process said (RuntimeError on a failure)."""
        total = 0
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if not line.startswith("registered "):
                raise RuntimeError(f"a simulator failed: {line or 'it exited'}")
            total += int(line.split()[1])
        return total

    def stop(self) -> None:
        for proc in self.procs:
            try:
                assert proc.stdin is not None
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
