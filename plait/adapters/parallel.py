"""The foolscap adapter of ``plait.parallel``'s service (``ipcontroller-client.furl``).

:class:`FoolscapParallel` publishes an :class:`~plait.interfaces.parallel.IParallel`
as :class:`~plait.interfaces.parallel.RIParallel`; each client opens a
session of its own (a channel, or ``open_session`` on foolscap), published
as a :class:`FoolscapParallelSession` and closed with its connection.  Both
only delegate, answering outcomes ``(ok, value)`` (see :mod:`._outcome`);
records travel encoded (:func:`~plait.wire.records.encode_result`).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from zope.interface import implementer

from plait.adapters._outcome import outcome, submit_then
from plait.adapters._uploads import OffersUploads
from plait.interfaces.parallel import IParallel, IParallelSession, RIParallel
from plait.wire.errors import TaskAlreadyCompleted
from plait.wire.records import encode_result, encode_results, record_of
from plait.wire.serialize import loads_plain

#: The methods :meth:`FoolscapParallelSession.remote_submit_then` may call.
FOLLOWERS = frozenset({
    "reserve", "records", "result_status", "abort", "queue_status", "info", "get_ids",
    "history", "resubmit", "results", "purge", "query_rows", "shutdown", "wait_for_engines",
    "send_signal", "setup",
})

_SESSION_ONLY = "this call needs a session: open a channel or a session first"


def _encoded_rows(rows: list[dict | None]) -> list[bytes | None]:
    return [None if row is None else encode_result(record_of(row)) for row in rows]


def _plain_rows(columns_rows: tuple[list[str], list[tuple]]) -> bytes:
    """The hub's ``(columns, rows)`` as one plain pickle (what a store holds is
    plain data: numbers, text, bytes, lists), not as a banana list of dicts."""
    return pickle.dumps(columns_rows, protocol=5)


# mypy-zope looks for the RI methods by name; foolscap calls remote_<name> ones
@implementer(RIParallel)
class FoolscapParallel(OffersUploads, Referenceable):  # type: ignore[misc]
    """Publishes an :class:`IParallel`: what needs no session, and sessions."""

    def __init__(self, service: IParallel, blobs: Any = None, channels: Any = None):
        self.service = service
        self.blobs = blobs
        self.channels = channels

    def _call(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        return outcome(defer.maybeDeferred(fn, *args))

    def remote_info(self) -> defer.Deferred:
        return self._call(self.service.info)

    def remote_get_ids(self) -> defer.Deferred:
        return self._call(self.service.get_ids)

    def remote_wait_for_engines(self, n: int) -> defer.Deferred:
        return self._call(self.service.wait_for_engines, n)

    def remote_records(self, taskids: list, block: bool = False) -> defer.Deferred:
        d = defer.maybeDeferred(self.service.hub.records, list(taskids), block)
        return outcome(d.addCallback(_encoded_rows))

    def remote_result_status(self, taskids: list) -> defer.Deferred:
        return self._call(self.service.hub.status, list(taskids))

    def remote_history(self) -> defer.Deferred:
        return self._call(self.service.hub.history)

    def remote_query_rows(self, query: bytes, keys: list, everything: bool) -> defer.Deferred:
        return self._call(lambda: self.service.hub.query_rows(
            loads_plain(query), None if everything else list(keys)).addCallback(_plain_rows))

    def remote_purge(self, everything: bool, taskids: list) -> defer.Deferred:
        return self._call(self.service.purge, None if everything else list(taskids))

    def remote_queue_status(self, verbose: bool = False) -> defer.Deferred:
        return self._call(self.service.queue_status, verbose)

    def remote_shutdown(self, everyone: bool, targets: list, hub: bool) -> defer.Deferred:
        return self._call(self.service.shutdown, None if everyone else list(targets), hub)

    def remote_setup(self, lines: str) -> defer.Deferred:
        return self._call(self.service.setup, lines)

    def remote_send_signal(self, signum: int, everyone: bool, targets: list) -> defer.Deferred:
        return self._call(self.service.send_signal, signum,
                          None if everyone else list(targets))

    def remote_open_channel(self) -> tuple[bytes, int]:
        """A channel served by a session of its own, closed with the channel."""
        if self.channels is None:
            raise RuntimeError("this controller offers no channel for plait.parallel")
        session = self.service.session()
        adapter = FoolscapParallelSession(session, self.blobs)

        def bound(channel: Any) -> None:
            adapter.channel = channel
            channel.notifyOnDisconnect(session.close)

        return self.channels.issue(adapter, on_bound=bound)

    def remote_open_session(self, listener: Any) -> FoolscapParallelSession:
        """A session for a client on foolscap, closed when ``listener``'s connection goes."""
        if not hasattr(listener, "notifyOnDisconnect"):
            raise TypeError("open_session needs a reference to an object of the client")
        session = self.service.session()
        listener.notifyOnDisconnect(session.close)
        return FoolscapParallelSession(session, self.blobs)

    def _session_only(self, *args: Any) -> defer.Deferred:
        return outcome(defer.fail(RuntimeError(_SESSION_ONLY)))

    remote_reserve = remote_submit = remote_submit_then = remote_results = _session_only
    remote_push_results = remote_submit_one_way = _session_only
    remote_abort = remote_resubmit = remote_end_session = _session_only


class FoolscapParallelSession(FoolscapParallel):
    """One client's session (an :class:`IParallelSession`) on the wire."""

    def __init__(self, session: IParallelSession, blobs: Any = None):
        super().__init__(session.service, blobs, None)
        self.session = session
        #: The channel this session is served on (None on foolscap alone).
        self.channel: Any = None

    def remote_reserve(self, n: int) -> defer.Deferred:
        return self._call(self.session.reserve, n)

    def remote_submit(self, tasks: list) -> defer.Deferred:
        return self._call(self.session.submit_acknowledged, [tuple(item) for item in tasks])

    def remote_submit_one_way(self, tasks: list) -> defer.Deferred:
        return self._call(self.session.submit, [tuple(item) for item in tasks])  # (unanswered)

    def remote_submit_then(self, tasks: list, method: str, args: list) -> defer.Deferred:
        return submit_then(self, self.session, RIParallel, FOLLOWERS, tasks, method, args)

    def remote_results(self) -> defer.Deferred:
        d = defer.maybeDeferred(self.session.results)
        return outcome(d.addCallback(
            lambda news: (encode_results(news[0]), news[1], news[2])))

    def remote_push_results(self) -> defer.Deferred:
        channel = self.channel
        if channel is None:
            return outcome(defer.fail(RuntimeError(
                "results are pushed on a channel only: call results() on foolscap")))

        def push(news: Any) -> None:
            channel.callRemoteOnly("results_ready", encode_results(news[0]), news[1], news[2])

        return self._call(self.session.push_results, push)

    def remote_abort(self, taskids: list) -> defer.Deferred:
        def abort() -> defer.Deferred:
            finished, told = [], []
            for taskid in taskids:
                try:
                    told.append(self.session.abort(taskid))
                except TaskAlreadyCompleted:
                    finished.append(taskid)
            return defer.gatherResults(told).addCallback(lambda _: finished)

        return self._call(abort)

    def remote_resubmit(self, taskids: list) -> defer.Deferred:
        def resubmit() -> defer.Deferred:
            d = self.session.resubmit(list(taskids))
            return d.addCallback(lambda ids: self.session.durable().addCallback(lambda _: ids))

        return self._call(resubmit)

    def remote_end_session(self) -> defer.Deferred:
        return self._call(self.session.close)

    def remote_open_channel(self) -> tuple[bytes, int]:
        raise RuntimeError("this is a session already: open channels on the published object")

    def remote_open_session(self, listener: Any) -> FoolscapParallelSession:
        raise RuntimeError("this is a session already: open sessions on the published object")


