"""The foolscap adapter of the Task service (``ipcontroller-tc.furl``).

:class:`FoolscapTaskController` publishes an
:class:`~plait.interfaces.task.ITaskController` as
:class:`~plait.interfaces.task.RITaskController`.  It is thin: each remote
method calls the service and answers with an outcome ``(ok, value)`` (see
:func:`plait.adapters.multiengine.outcome`), so the client raises the
controller's own exceptions (InvalidTaskID, TaskAlreadyCompleted...) with
their messages.  Result records are encoded here with
:func:`~plait.wire.task.encode_result`; task payloads pass through
unopened.

Sessions
--------
Each client connection is a :class:`TaskSession`: the object its channel is
bound to (``open_channel``), or, for a client that stays on foolscap, the
object ``open_session`` returns.  A session is the *owner* of the task ids
it reserves (no other connection can submit under them) and keeps track of
its blocking calls (``barrier``, ``get_task_result(block=True)``...).  When
its connection goes away, or the client ends it (``end_session``), the
session ends: its unused ids are dropped and its blocking calls are
cancelled, so that nothing a departed client asked for stays in the
controller.  Callers of the published object itself (raw
foolscap, without a session) share it as one owner.

Security: tasks carry ``depend`` functions that the controller runs (see
:mod:`plait.kernel.controller.task`), so the tc FURL grants code execution in the
controller.
"""

from __future__ import annotations

from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from zope.interface import implementer

from plait.adapters._uploads import OffersUploads
from plait.adapters.multiengine import outcome
from plait.interfaces.task import ITaskController, RITaskController
from plait.wire.task import TaskResultRecord, encode_result

#: The methods :meth:`FoolscapTaskController.remote_submit_then` may call.
FOLLOWERS = frozenset({
    "reserve", "get_task_result", "get_task_results", "barrier", "abort",
    "queue_status", "spin", "clear", "info",
})


def _encoded(record: TaskResultRecord | None) -> bytes | None:
    return None if record is None else encode_result(record)


# mypy-zope looks for the RI methods by name; foolscap calls remote_<name> ones
@implementer(RITaskController)
class FoolscapTaskController(OffersUploads, Referenceable):  # type: ignore[misc]
    """Publishes an :class:`ITaskController` service as :class:`RITaskController`.

    ``blobs`` is the controller's :class:`~plait.kernel.controller.blobserver.BlobServer`,
    through which clients upload tasks too large to travel inline;
    ``channels`` its client :class:`~plait.wire.channel.ChannelServer`
    (None: clients stay on foolscap).  Calls made on this object directly
    share it as the owner of their task ids; clients get a
    :class:`TaskSession` each (see the module documentation).
    """

    def __init__(self, service: ITaskController, blobs: Any = None, channels: Any = None):
        self.service = service
        self.blobs = blobs
        self.channels = channels
        self._waits: set[defer.Deferred] = set()  # blocking calls not answered yet

    def _call(self, method: str, *args: Any) -> defer.Deferred:
        return outcome(defer.maybeDeferred(getattr(self.service, method), *args))

    def _blocking(self, d: defer.Deferred) -> defer.Deferred:
        """Keep ``d`` (a service call that may wait long) until it fires."""
        self._waits.add(d)

        def done(result: Any) -> Any:
            self._waits.discard(d)
            return result

        return d.addBoth(done)

    def remote_reserve(self, n: int) -> defer.Deferred:
        return self._call("reserve", n, self)

    def remote_submit(self, tasks: list) -> defer.Deferred:
        return self._call("submit", [tuple(item) for item in tasks], self)

    def remote_submit_then(self, tasks: list, method: str, args: list) -> defer.Deferred:
        try:
            refused = self.service.submit([tuple(item) for item in tasks], self)
        except Exception:
            return outcome(defer.fail())
        follower = self._follower(method, args)
        return outcome(follower.addCallback(lambda result: (refused, result)))

    def _follower(self, method: str, args: list) -> defer.Deferred:
        """The outcome of the call following a submission (its own refusal, if any)."""
        if method not in FOLLOWERS:
            return outcome(defer.fail(ValueError(f"submit_then cannot call {method!r}")))
        try:
            RITaskController[method].checkAllArgs(tuple(args), {}, True)
        except Exception:
            return outcome(defer.fail())
        return getattr(self, f"remote_{method}")(*args)

    def remote_get_task_result(self, taskid: int, block: bool = False) -> defer.Deferred:
        d = defer.maybeDeferred(self.service.get_task_result, taskid, block)
        return outcome(self._blocking(d).addCallback(_encoded))

    def remote_get_task_results(self, taskids: list, block: bool = False) -> defer.Deferred:
        d = defer.maybeDeferred(self.service.get_task_results, list(taskids), block)
        return outcome(self._blocking(d).addCallback(lambda rs: [_encoded(r) for r in rs]))

    def remote_barrier(self, taskids: list) -> defer.Deferred:
        return outcome(self._blocking(defer.maybeDeferred(self.service.barrier, list(taskids))))

    def remote_abort(self, taskid: int) -> defer.Deferred:
        return self._call("abort", taskid)

    def remote_queue_status(self, verbose: bool = False) -> defer.Deferred:
        return self._call("queue_status", verbose)

    def remote_spin(self) -> defer.Deferred:
        return self._call("spin")

    def remote_clear(self, everything: bool, taskids: list) -> defer.Deferred:
        return self._call("clear", None if everything else list(taskids))

    def remote_info(self) -> defer.Deferred:
        return self._call("info")

    def remote_open_channel(self) -> tuple[bytes, int]:
        if self.channels is None:
            raise RuntimeError("this controller offers no channel for the task interface")
        session = TaskSession(self.service, self.blobs)
        return self.channels.issue(session, session.bind)

    def remote_end_session(self) -> defer.Deferred:
        return outcome(defer.fail(RuntimeError("only a session can be ended")))

    def remote_open_session(self, listener: Any) -> TaskSession:
        if not hasattr(listener, "notifyOnDisconnect"):
            raise TypeError("open_session needs a reference to an object of the client")
        session = TaskSession(self.service, self.blobs)
        listener.notifyOnDisconnect(session.close)
        return session


class TaskSession(FoolscapTaskController):
    """The task interface as one client connection sees it (see the module doc).

    :meth:`bind` ties it to a channel; :meth:`close` ends it.
    """

    def __init__(self, service: ITaskController, blobs: Any = None):
        super().__init__(service, blobs, None)
        self.closed = False

    def bind(self, channel: Any) -> None:
        """The channel serving this session is open: end the session when it closes."""
        channel.notifyOnDisconnect(self.close)

    def close(self) -> None:
        """The connection went away: drop its unused task ids, cancel its blocking calls."""
        if self.closed:
            return
        self.closed = True
        self.service.release(self)
        for d in list(self._waits):
            d.cancel()

    def remote_end_session(self) -> defer.Deferred:
        self.close()
        return outcome(None)

    def remote_open_channel(self) -> tuple[bytes, int]:
        raise RuntimeError("this is a session already: open channels on the published object")

    def remote_open_session(self, listener: Any) -> TaskSession:
        raise RuntimeError("this is a session already: open sessions on the published object")
