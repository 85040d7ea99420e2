"""The foolscap adapter of the Task service (``ipcontroller-tc.furl``).

:class:`FoolscapTaskController` publishes an
:class:`~plait.interfaces.task.ITaskController` as
:class:`~plait.interfaces.task.RITaskController`.  It only delegates: each
remote method calls the service and answers with an outcome ``(ok, value)``
(see :func:`plait.adapters._outcome.outcome`), so the client raises the
controller's own exceptions (InvalidTaskID, TaskAlreadyCompleted...) with
their messages.  Result records are encoded here with
:func:`~plait.wire.task.encode_result`; task payloads pass through unopened.

Sessions
--------
Each client connection is a session of the service
(:meth:`ITaskController.session`, see
:mod:`plait.kernel.controller.tasksession`): the adapter opens one for each
channel (``open_channel``) or, for a client that stays on foolscap, each
``open_session``, publishes it as a :class:`FoolscapTaskSession`, and
closes it when the connection goes away or the client ends it
(``end_session``).  Callers of the published object itself (raw foolscap,
without a session) share the service as one owner of task ids.

Security: tasks carry ``depend`` functions that the controller runs (see
:mod:`plait.kernel.controller.task`), so the tc FURL grants code execution
in the controller.
"""

from __future__ import annotations

from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from zope.interface import implementer

from plait.adapters._outcome import outcome, submit_then
from plait.adapters._uploads import OffersUploads
from plait.interfaces.task import ITaskController, ITaskSession, RITaskController
from plait.wire.records import TaskResultRecord, encode_result

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
    (None: clients stay on foolscap).
    """

    def __init__(self, service: ITaskController, blobs: Any = None, channels: Any = None):
        self.service = service
        self.blobs = blobs
        self.channels = channels

    def _call(self, method: str, *args: Any) -> defer.Deferred:
        return outcome(defer.maybeDeferred(getattr(self.service, method), *args))

    def remote_reserve(self, n: int) -> defer.Deferred:
        return self._call("reserve", n)

    def remote_submit(self, tasks: list) -> defer.Deferred:
        return self._call("submit_acknowledged", [tuple(item) for item in tasks])

    def remote_submit_then(self, tasks: list, method: str, args: list) -> defer.Deferred:
        return submit_then(self, self.service, RITaskController, FOLLOWERS, tasks, method,
                           args)

    def remote_get_task_result(self, taskid: int, block: bool = False) -> defer.Deferred:
        d = defer.maybeDeferred(self.service.get_task_result, taskid, block)
        return outcome(d.addCallback(_encoded))

    def remote_get_task_results(self, taskids: list, block: bool = False) -> defer.Deferred:
        d = defer.maybeDeferred(self.service.get_task_results, list(taskids), block)
        return outcome(d.addCallback(lambda records: [_encoded(r) for r in records]))

    def remote_barrier(self, taskids: list) -> defer.Deferred:
        return self._call("barrier", list(taskids))

    def remote_abort(self, taskid: int) -> defer.Deferred:
        return self._call("abort", taskid)

    def remote_queue_status(self, verbose: bool = False) -> defer.Deferred:
        return self._call("queue_status", verbose)

    def remote_spin(self) -> defer.Deferred:
        return self._call("spin")

    def remote_clear(self, everything: bool, taskids: list, all_clients: bool = False
                     ) -> defer.Deferred:
        return self._call("clear", None if everything else list(taskids), all_clients)

    def remote_info(self) -> defer.Deferred:
        return self._call("info")

    def remote_open_channel(self) -> tuple[bytes, int]:
        """A channel served by a session of its own, closed with the channel."""
        if self.channels is None:
            raise RuntimeError("this controller offers no channel for the task interface")
        session = self.service.session()

        def bound(channel: Any) -> None:
            channel.notifyOnDisconnect(session.close)

        return self.channels.issue(FoolscapTaskSession(session, self.blobs), on_bound=bound)

    def remote_open_session(self, listener: Any) -> FoolscapTaskSession:
        """A session for a client on foolscap, closed when ``listener``'s connection goes."""
        if not hasattr(listener, "notifyOnDisconnect"):
            raise TypeError("open_session needs a reference to an object of the client")
        session = self.service.session()
        listener.notifyOnDisconnect(session.close)
        return FoolscapTaskSession(session, self.blobs)

    def remote_end_session(self) -> defer.Deferred:
        return outcome(defer.fail(RuntimeError("only a session can be ended")))


class FoolscapTaskSession(FoolscapTaskController):
    """One client's session (an :class:`ITaskSession`) on the wire."""

    service: ITaskSession

    def __init__(self, service: ITaskSession, blobs: Any = None):
        super().__init__(service, blobs, None)

    def remote_end_session(self) -> defer.Deferred:
        self.service.close()
        return outcome(None)

    def remote_open_channel(self) -> tuple[bytes, int]:
        raise RuntimeError("this is a session already: open channels on the published object")

    def remote_open_session(self, listener: Any) -> FoolscapTaskSession:
        raise RuntimeError("this is a session already: open sessions on the published object")
