"""What both clients that submit tasks share: a session, ids, submissions.

A :class:`SessionClient` is one *session* of the controller (its channel, or
an ``open_session`` object when it stays on foolscap): the task ids it
reserves are its own, and are dropped when it closes or disconnects.  It
submits tasks (:mod:`plait.wire.task`) without waiting (see
:mod:`plait.kernel.client._submit` for how ``run`` returns ids at once),
uploads the large ones to the bulk data channel, and makes sure at
:meth:`SessionClient.wait_for_send`, :meth:`SessionClient.close` and the
end of the process that they reached the controller.  The kernel
generation's TaskClient and ``plait.parallel``'s Client are both built on
it.
"""

from __future__ import annotations

from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer, threads
from twisted.python.failure import Failure

from plait.kernel.client import _reactor
from plait.kernel.client._base import AsyncClientBase, asynchronous, raise_outcome
from plait.kernel.client._submit import Submitter
from plait.wire import bulk as _bulk
from plait.wire import tunnel as _tunnel
from plait.wire.errors import PlaitConnectionError, TaskSpecError
from plait.wire.serialize import INLINE_LIMIT, frame_parts, pack_framed, serialize_parts
from plait.wire.task import TaskSpec, encode_task, recovery_chain


class SessionClient(AsyncClientBase):
    """A client that is a session of the controller and submits tasks (Twisted API)."""

    #: Send submissions one way (the controller reports a refused one as the
    #: task's failure, in the session's results): a session of plait.parallel.
    one_way_submissions = False

    def __init__(self, remote: Any, source: str = ""):
        super().__init__(remote, source)
        self._submitter = Submitter(
            self._outcome, self._remote_call_only if self.one_way_submissions else None)
        self._listener: Referenceable | None = None  # the session's end, on foolscap
        self._closed = False

    @defer.inlineCallbacks
    def _started(self) -> Any:
        """Become a session of the controller and reserve the first ids; fires with self.

        On a channel the channel is the session.  On foolscap alone, ask for
        a session object (a controller that offers none is used directly).
        """
        if self._remote is self._reference:
            self._listener = Referenceable()
            try:
                self._remote = yield self._reference.callRemote("open_session", self._listener)
            except Exception:
                self._listener = None
        yield self._submitter.reserve_first()
        return self

    def _connection_lost(self) -> None:
        self._submitter.connection_lost("the connection to the controller was lost first",
                                        self._all_finished())

    def _all_finished(self) -> bool:
        """Whether every task this client sent is known to have finished (a
        client that hears of results says; by default it does not know)."""
        return False

    @defer.inlineCallbacks
    def _rejoined(self) -> Any:
        """Connected again: a new session (its own ids) of the same controller."""
        if self._listener is not None:  # on foolscap alone: ask for a session again
            self._remote = yield self._reference.callRemote("open_session", self._listener)
        yield self._submitter.reserve_first()

    def _remote_call(self, method: str, *args: Any) -> defer.Deferred:
        try:
            self._check_open()
        except PlaitConnectionError:
            return defer.fail()
        return super()._remote_call(method, *args)

    def _remote_call_only(self, method: str, *args: Any) -> None:
        self._check_open()
        self._remote.callRemoteOnly(method, *args)

    def _outcome(self, method: str, *args: Any) -> defer.Deferred:
        return self._remote_call(method, *args).addCallback(raise_outcome)

    def _send(self, method: str, *args: Any) -> defer.Deferred:
        """A remote call made after every submission made before it."""
        return self._submitter.call_after(method, *args)

    # -- submitting ----------------------------------------------------------------
    def _encode(self, task: Any, pickler: str = "cloudpickle") -> tuple[bytes, list[Any]]:
        """``(wire bytes, engine parts)``; parts too large to go inline are
        :class:`~plait.wire.bulk.Outgoing` objects still to upload.  The engine
        parts are pickled with ``pickler`` (see :data:`plait.wire.serialize.PICKLERS`)."""
        if not isinstance(task, TaskSpec):
            raise TypeError(
                f"run takes a StringTask or a MapTask, not {type(task).__name__}"
            )
        parts: list[Any] = []

        def part(engine_task: Any) -> bytes:
            out = _bulk.outgoing(engine_task, pickler)
            parts.append(out)
            return out if isinstance(out, bytes) else b"B"

        def bulk_part(engine_task: Any) -> bytes:  # all but the smallest go by bulk
            head, buffers = serialize_parts(engine_task, pickler)
            segments, size = frame_parts(head, buffers)
            out = pack_framed(head, buffers) if size < 4096 else _bulk.Outgoing(segments, size)
            parts.append(out)
            return out if isinstance(out, bytes) else b"B"

        data = encode_task(task, part)
        if len(data) > INLINE_LIMIT:  # a recovery chain of large tasks: each part fits...
            parts.clear()
            data = encode_task(task, bulk_part)
            if len(data) > INLINE_LIMIT:
                raise TaskSpecError(
                    f"this task is too large to submit ({len(data)} bytes without its code "
                    f"and data): its depend functions pickle too large"
                )
        return data, parts

    @defer.inlineCallbacks
    def _upload(self, task: TaskSpec, parts: list[Any]) -> Any:
        """Upload the large engine parts of ``task``; fires with its wire bytes."""
        readers = [1 + item.retries for item in reversed(recovery_chain(task))]
        final: list[bytes] = []
        for out, n in zip(parts, readers, strict=True):
            if isinstance(out, bytes):
                final.append(out)
                continue
            token, blob_id, address = yield self._remote_call("open_upload", out.size, n)
            address = tuple(address)
            yield threads.deferToThread(out.send, address, token)
            final.append(out.descriptor(address, blob_id))
        it = iter(final)
        return encode_task(task, lambda _: next(it))

    def run(self, task: TaskSpec) -> defer.Deferred:
        """Submit ``task``; a Deferred firing with its int id, at once.

        TaskSpecError / RecoveryLoopError / SerializationError (and TypeError
        for something that is not a task) fail the Deferred when the task
        cannot be submitted; nothing is sent then.  PlaitConnectionError once
        the client is closed.
        """
        try:
            self._check_open()
            data, parts = self._encode(task)
        except Exception:
            return defer.fail()

        @defer.inlineCallbacks
        def go() -> Any:
            wire = data
            if any(not isinstance(p, bytes) for p in parts):
                wire = yield self._upload(task, parts)
            taskid = yield self._submitter.wait_for_id()
            self._submitter.enqueue(taskid, wire)
            return taskid

        d = go()
        self._submitter.track_run(d)
        return d

    def run_from_thread(self, task: TaskSpec) -> int:
        """:meth:`run` for a thread other than the reactor's: returns the id.

        The task is encoded in the calling thread and, unless it is large or
        the reserved ids ran out, the reactor thread is not waited for.
        """
        data = self.prepare_from_thread(task)
        taskid = self.take_id_from_thread()
        self._submitter.enqueue(taskid, data)
        return taskid

    def prepare_from_thread(self, task: TaskSpec, pickler: str = "cloudpickle") -> bytes:
        """(Not the reactor thread) ``task``'s wire bytes, its large parts uploaded.

        Raises what :meth:`run` fails with.
        """
        self._check_open()
        data, parts = self._encode(task, pickler)
        if any(not isinstance(p, bytes) for p in parts):
            data = _reactor.call(self._upload, task, parts)
        return data

    def take_id_from_thread(self) -> int:
        """(Not the reactor thread) a reserved task id, waiting for one if none is left."""
        taskid = self._submitter.take_id()
        if taskid is None:
            taskid = _reactor.call(self._submitter.wait_for_id)
        return taskid

    def enqueue(self, taskid: int, data: bytes) -> None:
        """(Any thread) submit ``data`` under ``taskid`` soon (see the Submitter)."""
        self._submitter.enqueue(taskid, data)

    def hurry(self) -> None:
        """(Any thread) send what is buffered now: someone waits for it."""
        self._submitter.hurry()

    def _check_open(self) -> None:
        if self._closed:
            raise PlaitConnectionError(f"this TaskClient was closed ({self._source}); "
                                   f"connect a new one")

    @asynchronous
    def wait_for_send(self) -> defer.Deferred:
        """Make sure every task submitted so far has reached the controller.

        ``run`` returns before its task is sent (submissions travel in
        batches); this sends what waits and fires with None once the
        controller has them all.  Fails with TaskSubmissionError when some
        could not be submitted since the last time (how many, and why), or
        when the controller could not be reached to confirm.  Programs need
        not call it before exiting: at exit the process does so for every
        open client (waiting 10 s at most).
        """
        return self._submitter.drain()

    @asynchronous
    def close(self) -> defer.Deferred:
        """:meth:`wait_for_send`, then close the connection; a Deferred firing with None.

        The controller then drops the ids this client reserved and did not
        use, and forgets its waiting calls; finished results stay there
        until cleared.  Later calls fail with PlaitConnectionError; closing
        again does nothing.  Fails as :meth:`wait_for_send` does (the client is
        closed all the same).
        """
        if self._closed:
            return defer.succeed(None)

        @defer.inlineCallbacks
        def shut(result: Any) -> Any:
            if self._remote is not self._reference:  # a session: end it now
                try:
                    yield self._outcome("end_session")
                except Exception:
                    pass  # gone already (or an old controller): it ends with the connection
            self._closed = True
            self._submitter.close()
            if hasattr(self._remote, "close"):
                self._remote.close()  # the channel
            if self._tunnelled is not None:  # the route to its host, if it was the last
                _tunnel.release(self._tunnelled)
            if isinstance(result, Failure):
                result.raiseException()  # what wait_for_send found

        return self.wait_for_send().addBoth(shut)
