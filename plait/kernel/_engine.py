"""The engine process: a Twisted client of the controller that runs user code.

User code runs in the process's main thread (so that signals, matplotlib and
friends behave as in a normal script); the reactor runs in a background
thread, where it keeps answering the controller's keepalives however long
user code runs.  Commands arriving from the controller are handed to the
main thread through :class:`MainThreadExecutor`, one at a time, in order.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid as uuid_module
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import Logger

from plait.kernel._serialize import serialize
from plait.security import client_tub

log = Logger()


class MainThreadExecutor:
    """Runs callables in the thread that calls :meth:`run_forever`.

    :meth:`submit` may be called from the reactor thread; it returns a
    Deferred that fires (in the reactor thread) with the callable's result.
    The callable must not raise: engine handlers return replies.
    """

    _STOP = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._queue.put((fn, args, d))
        return d

    def stop(self) -> None:
        self._queue.put(self._STOP)

    def run_forever(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            fn, args, d = item
            try:
                result = fn(*args)
            except BaseException as exc:  # a handler bug; keep the engine alive
                result = exc
                reactor.callFromThread(d.errback, exc)
                continue
            reactor.callFromThread(d.callback, result)


class Engine:
    """One engine: connects, registers, serves commands until told to stop."""

    def __init__(self, furl: str, properties: dict | None = None,
                 on_registered: Callable[[int], None] | None = None):
        from plait.adapters.engine_server import FoolscapEngine
        from plait.kernel._interpreter import Interpreter

        self.furl = furl
        self.uuid = str(uuid_module.uuid4())
        self.interpreter = Interpreter(properties=properties)
        self.executor = MainThreadExecutor()
        self.remote_self = FoolscapEngine(self)
        self.registrar: Any = None
        self.channel: Any = None
        self.id: int | None = None
        self.on_registered = on_registered
        self.exit_code = 0
        self.error: str | None = None

    # -- reactor thread -----------------------------------------------------
    @defer.inlineCallbacks
    def connect(self) -> Any:
        try:
            self.registrar = yield client_tub().getReference(self.furl)
            token = yield self._open_channel()
            self.id = yield self.registrar.callRemote(
                "register_engine", self.remote_self, self.uuid,
                serialize(self.interpreter.properties), token,
            )
        except Exception as exc:
            self.error = f"could not register with the controller at {self.furl.split('@')[-1]}: {exc}"
            log.error("{msg}", msg=self.error)
            self.shutdown(2)
            return
        self.interpreter.engine_id = self.id
        self.registrar.notifyOnDisconnect(self._controller_lost)
        log.info("registered as engine {id}", id=self.id)
        if self.on_registered is not None:
            self.on_registered(self.id)

    @defer.inlineCallbacks
    def _open_channel(self) -> Any:
        """Open the command channel; returns its token (b'' to use foolscap only)."""
        from plait.adapters.channel import channel_address, open_channel

        try:
            token, port = yield self.registrar.callRemote("open_channel")
            tub_id, host = channel_address(self.furl)
            self.channel = yield open_channel(host, port, token, tub_id, local=self.remote_self)
        except Exception as exc:
            log.warn("no command channel ({e}); commands will travel on foolscap", e=exc)
            return b""
        self.channel.notifyOnDisconnect(self._controller_lost)
        return token

    def _controller_lost(self, *args: Any) -> None:
        log.info("the controller went away; engine {id} exits", id=self.id)
        self.shutdown(0)

    def shutdown(self, code: int = 0) -> None:
        self.exit_code = code
        self.executor.stop()

    def sync_properties(self, props: dict) -> None:
        """Send properties changed by user code to the controller."""
        if self.registrar is not None and self.id is not None:
            self.registrar.callRemote("set_properties", self.id, serialize(props)).addErrback(
                lambda f: log.failure("could not sync properties", f)
            )

    # -- main thread --------------------------------------------------------
    def run(self) -> int:
        """Start the reactor thread, connect, and serve until stopped."""
        thread = threading.Thread(
            target=reactor.run, kwargs={"installSignalHandlers": False},
            name="plait-reactor", daemon=True,
        )
        reactor.callWhenRunning(self.connect)
        thread.start()
        try:
            self.executor.run_forever()
        except KeyboardInterrupt:
            self.exit_code = 130
        return self.exit_code


def hard_exit(code: int) -> None:
    """Leave now: flush what can be flushed, skip interpreter teardown."""
    for stream in ("stdout", "stderr"):
        try:
            getattr(__import__("sys"), stream).flush()
        except Exception:
            pass
    os._exit(code)
