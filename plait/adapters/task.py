"""The foolscap adapter of the Task service (``ipcontroller-tc.furl``).

:class:`FoolscapTaskController` publishes an
:class:`~plait.interfaces.task.ITaskController` as
:class:`~plait.interfaces.task.RITaskController`.  It is thin: each remote
method calls the service and answers with an outcome ``(ok, value)`` (see
:func:`plait.adapters.multiengine.outcome`), so the client raises the
controller's own exceptions (InvalidTaskID, TaskAlreadyCompleted...) with
their messages.  Result records are encoded here with
:func:`~plait.kernel._taskspec.encode_result`; task payloads pass through
unopened.
"""

from __future__ import annotations

from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from zope.interface import implementer

from plait.adapters.multiengine import outcome
from plait.interfaces.task import ITaskController, RITaskController
from plait.kernel._taskspec import TaskResultRecord, encode_result

#: The methods :meth:`FoolscapTaskController.remote_submit_then` may call.
FOLLOWERS = frozenset({
    "run", "reserve", "get_task_result", "get_task_results", "barrier", "abort",
    "queue_status", "spin", "clear", "info",
})


def _encoded(record: TaskResultRecord | None) -> bytes | None:
    return None if record is None else encode_result(record)


@implementer(RITaskController)
class FoolscapTaskController(Referenceable):
    """Publishes an :class:`ITaskController` service as :class:`RITaskController`.

    ``blobs`` is the controller's :class:`~plait.kernel._blobserver.BlobServer`,
    through which clients upload tasks too large to travel inline;
    ``channels`` its client :class:`~plait.adapters.channel.ChannelServer`
    (None: clients stay on foolscap).
    """

    def __init__(self, service: ITaskController, blobs: Any = None, channels: Any = None):
        self.service = service
        self.blobs = blobs
        self.channels = channels

    def _call(self, method: str, *args: Any) -> defer.Deferred:
        return outcome(defer.maybeDeferred(getattr(self.service, method), *args))

    def remote_run(self, task: bytes) -> defer.Deferred:
        return self._call("run", task)

    def remote_reserve(self, n: int) -> defer.Deferred:
        return self._call("reserve", n)

    def remote_submit(self, tasks: list) -> defer.Deferred:
        return self._call("submit", [tuple(item) for item in tasks])

    def remote_submit_then(self, tasks: list, method: str, args: list) -> defer.Deferred:
        try:
            refused = self.service.submit([tuple(item) for item in tasks])
        except Exception:
            return outcome(defer.fail())
        if method not in FOLLOWERS:
            return outcome(defer.fail(ValueError(f"submit_then cannot call {method!r}")))
        try:
            RITaskController[method].checkAllArgs(tuple(args), {}, True)
        except Exception:
            return outcome(defer.fail())
        inner = getattr(self, f"remote_{method}")(*args)
        return outcome(inner.addCallback(lambda result: (refused, result)))

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

    def remote_clear(self, everything: bool, taskids: list) -> defer.Deferred:
        return self._call("clear", None if everything else list(taskids))

    def remote_info(self) -> defer.Deferred:
        return self._call("info")

    def remote_open_upload(self, size: int, readers: int) -> tuple:
        token, blob_id = self.blobs.create(size, readers)
        return token, blob_id, self.blobs.address

    def remote_open_channel(self) -> tuple[bytes, int]:
        if self.channels is None:
            raise RuntimeError("this controller offers no channel for the task interface")
        return self.channels.issue(self)
