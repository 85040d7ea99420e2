"""The asynchronous MultiEngine client (the blocking one is derived from it).

Every method returns a Deferred.  ``targets`` and ``block`` default to the
attributes of the same names; with ``block=False`` the Deferred fires with
a :class:`PendingResult` at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads

from plait.interfaces.multiengine import targets_to_wire
from plait.kernel import _bulk
from plait.kernel._clientbase import (
    AsyncClientBase,
    asynchronous,
    connect,
    decode_replies,
    resolve_furl,
)
from plait.kernel._display import ResultList
from plait.kernel._errors import collect_results
from plait.security import MEC_FURL


def per_engine(method: str, shape: Callable[[list[Any]], Any] = list
               ) -> Callable[[list], defer.Deferred]:
    """A finisher: decode per-engine replies, raise CompositeError on failures."""

    def finish(replies: list) -> defer.Deferred:
        return decode_replies(replies).addCallback(
            lambda decoded: shape(collect_results(method, decoded))
        )

    return finish


class AsyncMultiEngineClient(AsyncClientBase):
    """Drive the engines of a controller one by one or all together (Twisted API)."""

    def __init__(self, remote: Any, source: str = ""):
        super().__init__(remote, source)
        self.targets: Any = "all"
        self.block: bool = True

    @classmethod
    def connect(cls, furl_or_file: Any = None, profile: str | None = None) -> defer.Deferred:
        """A Deferred firing with a client connected to the MultiEngine FURL.

        With no argument, the FURL file of ``profile`` (default 'default') is used.
        """
        try:
            furl, source = resolve_furl(furl_or_file, profile, MEC_FURL)
        except Exception:
            return defer.fail()
        return connect(furl, source).addCallback(cls, source)

    def _tb(self, targets: Any, block: bool | None) -> tuple[Any, bool]:
        return (self.targets if targets is None else targets,
                self.block if block is None else block)

    def _engine_call(self, method: str, *args: Any, targets: Any = None, block: bool | None = None,
                     shape: Callable[[list[Any]], Any] = list) -> defer.Deferred:
        targets, block = self._tb(targets, block)
        try:
            wire = targets_to_wire(targets)
        except TypeError:
            return defer.fail()
        return self._call(method, *args, wire, block=block, finish=per_engine(method, shape))

    def _payload(self, obj: Any, readers: Callable[[], Any]) -> defer.Deferred:
        """A Deferred with ``(payload bytes, upload Deferred or None)`` for ``obj``."""
        out = _bulk.outgoing(obj)
        if isinstance(out, bytes):
            return defer.succeed((out, None))

        @defer.inlineCallbacks
        def upload() -> Any:
            n = yield readers()
            token, blob_id, address = yield self._remote_call("open_upload", out.size, n)
            address = tuple(address)
            sending = threads.deferToThread(out.send, address, token)
            return out.descriptor(address, blob_id), sending

        return upload()

    def _count(self, targets: Any) -> defer.Deferred:
        targets, _ = self._tb(targets, None)
        if targets == "all":
            return self.get_ids().addCallback(len)
        return defer.succeed(1 if isinstance(targets, int) else len(targets))

    # -- the interface -----------------------------------------------------
    @asynchronous
    def get_ids(self) -> defer.Deferred:
        """The ids of the registered engines."""
        return self._call("get_ids")

    @asynchronous
    def execute(self, lines: str, targets: Any = None, block: bool | None = None
                ) -> defer.Deferred:
        """Run Python source on the targets; a ResultList of per-engine dicts."""
        if not isinstance(lines, str):
            return defer.fail(TypeError(f"execute wants a str of Python code, not {type(lines).__name__}"))
        return self._engine_call("execute", lines, targets=targets, block=block, shape=ResultList)

    @asynchronous
    def push(self, namespace: dict, targets: Any = None, block: bool | None = None
             ) -> defer.Deferred:
        """Push the names and values of ``namespace`` to the targets."""
        if not isinstance(namespace, dict):
            return defer.fail(TypeError(f"push wants a dict of names to values, not {type(namespace).__name__}"))
        bad = [k for k in namespace if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            return defer.fail(ValueError(f"push: keys must be valid Python names, got {bad!r}"))
        return self._push_payload("push", namespace, targets, block)

    def _push_payload(self, method: str, namespace: dict, targets: Any, block: bool | None
                      ) -> defer.Deferred:
        @defer.inlineCallbacks
        def run() -> Any:
            payload, sending = yield self._payload(namespace, lambda: self._count(targets))
            result = yield self._engine_call(method, payload, targets=targets, block=block)
            if sending is not None:
                yield sending
            return result

        return run()

    @asynchronous
    def pull(self, keys: str | list[str] | tuple[str, ...], targets: Any = None,
             block: bool | None = None) -> defer.Deferred:
        """Values of ``keys`` on each target: one key gives ``[v0, v1, ...]``,
        several give ``[[a0, b0], [a1, b1], ...]``."""
        single = isinstance(keys, str)
        names = [keys] if single else list(keys)
        bad = [k for k in names if not isinstance(k, str)]
        if bad:
            return defer.fail(TypeError(f"pull wants names (str), got {bad!r}"))
        shape = (lambda vs: [v[0] for v in vs]) if single else list
        return self._engine_call("pull", names, targets=targets, block=block, shape=shape)
