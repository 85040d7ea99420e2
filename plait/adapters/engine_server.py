"""The engine's own foolscap object: how the controller drives one engine.

Each ``remote_*`` method hands the command to the engine's main thread and
answers with the reply ``(ok, payload)`` of :mod:`plait.interfaces.engine`.
Arguments are decoded in the main thread (large payloads are fetched from
the controller's data channel there), and large values are uploaded there.
"""

from __future__ import annotations

import threading
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer, reactor
from twisted.logger import Logger
from zope.interface import implementer

from plait.interfaces.engine import RIEngine
from plait.kernel import _bulk
from plait.kernel._engine import hard_exit
from plait.kernel._serialize import deserialize, is_bulk

log = Logger()


@implementer(RIEngine)
class FoolscapEngine(Referenceable):
    """Adapts an :class:`plait.kernel._engine.Engine` onto :class:`RIEngine`."""

    def __init__(self, engine: Any):
        self.engine = engine
        self._uploads: list[threading.Thread] = []

    # -- main thread helpers --------------------------------------------------
    def _decode(self, payload: bytes) -> Any:
        return _bulk.fetch(payload) if is_bulk(payload) else deserialize(payload)

    def _encode(self, value: Any) -> bytes:
        """The reply payload for ``value``; a large one is uploaded meanwhile.

        The reply goes out at once and the upload streams in a thread, so
        the client fetches while the engine sends.  The buffers of ``value``
        are sent without copying, so the next command waits for the upload
        (:meth:`_drain_uploads`) before user code may touch them again.
        """
        out = _bulk.outgoing(value)
        if isinstance(out, bytes):
            return out
        token, blob_id, address = _blocking_remote(
            self.engine.session, "open_upload", out.size, 1
        )
        address = tuple(address)
        thread = threading.Thread(
            target=self._upload, args=(out, address, token), name="plait-upload", daemon=True
        )
        thread.start()
        self._uploads.append(thread)
        return out.descriptor(address, blob_id)

    @staticmethod
    def _upload(out: Any, address: tuple, token: bytes) -> None:
        try:
            out.send(address, token)
        except Exception as exc:  # the receiver's fetch fails and says so
            log.warn("an upload to the controller failed: {e}", e=exc)

    def _drain_uploads(self) -> None:
        while self._uploads:
            self._uploads.pop().join()

    def _handle(self, method: str, decode: bool, *args: Any) -> tuple[bool, bytes]:
        interp = self.engine.interpreter
        self._drain_uploads()
        try:
            if decode:
                args = tuple(self._decode(a) for a in args)
        except BaseException as exc:
            reply = False, interp.failure_payload(exc, method)
        else:
            reply = interp.handle(method, *args, encode=self._encode)
        changed = interp.take_changed_properties()
        if changed is not None:
            reactor.callFromThread(self.engine.sync_properties, changed)
        return reply

    def call(self, method: str, args: tuple) -> Any:
        """Run an :class:`RIEngine` request in this (the main) thread.

        This is how the engine's command channel serves requests; the
        ``remote_*`` methods below do the same through foolscap.
        """
        if method == "kill":
            reactor.callFromThread(reactor.callLater, 0.01, hard_exit, 0)
            return None
        if method == "ping":
            return True
        name, decode, convert = _COMMANDS[method]
        return self._handle(name, decode, *convert(*args))

    def _submit(self, method: str, args: tuple) -> defer.Deferred:
        return self.engine.executor.submit(self.call, method, args)

    # -- RIEngine over foolscap (used when no channel could be opened) ----------
    def remote_execute(self, lines: str, filename: str = "") -> defer.Deferred:
        return self._submit("execute", (lines, filename))

    def remote_push(self, namespace: bytes) -> defer.Deferred:
        return self._submit("push", (namespace,))

    def remote_pull(self, keys: list[str]) -> defer.Deferred:
        return self._submit("pull", (keys,))

    def remote_apply(self, call: bytes) -> defer.Deferred:
        return self._submit("apply", (call,))

    def remote_get_result(self, i: int | None) -> defer.Deferred:
        return self._submit("get_result", (i,))

    def remote_keys(self) -> defer.Deferred:
        return self._submit("keys", ())

    def remote_reset(self) -> defer.Deferred:
        return self._submit("reset", ())

    def remote_run_task(self, task: bytes) -> defer.Deferred:
        return self._submit("run_task", (task,))

    def remote_kill(self) -> None:
        """Exit now, even in the middle of user code (after answering)."""
        reactor.callLater(0.01, hard_exit, 0)

    def remote_ping(self) -> bool:
        return True


def _same(*args: Any) -> tuple:
    return args


#: RIEngine method -> (Interpreter method, decode payload arguments?, argument conversion)
_COMMANDS: dict[str, tuple[str, bool, Any]] = {
    "execute": ("execute", False, lambda lines, filename="": (lines, filename or None)),
    "push": ("push", True, _same),
    "pull": ("pull", False, _same),
    "apply": ("apply_call", True, _same),
    "get_result": ("get_result", False, _same),
    "keys": ("keys", False, _same),
    "reset": ("reset", False, _same),
    "run_task": ("run_task", True, _same),
}


def _blocking_remote(ref: Any, method: str, *args: Any) -> Any:
    """Call a remote method from the main thread and wait for its answer."""
    from twisted.internet.threads import blockingCallFromThread

    return blockingCallFromThread(reactor, ref.callRemote, method, *args)
