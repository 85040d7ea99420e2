"""How a TaskClient gets tasks to the controller quickly.

``run`` must hand back a task id at once, yet a round trip to the controller
costs about as much as running a small task.  So the client does not ask for
each id: it *reserves* ids in blocks (:meth:`ITaskController.reserve`) and
gives them out locally, and it sends the submissions without waiting for an
answer.  Messages keep their order on a connection, so any later
call of the same client (``barrier``, ``get_task_result``...) reaches the
controller after the submissions made before it.

Submissions made in a burst are *coalesced*: :class:`Submitter` keeps at most
:data:`MAX_IN_FLIGHT` ``submit`` messages unanswered, and whatever is
submitted meanwhile leaves in the next message, together (much like Nagle's
algorithm on TCP).  A lone task leaves at once; while submissions keep
coming, a ticker sends what accumulated every :data:`TICK` seconds, so
``run`` need not wake the reactor thread each time, and a loop of
thousands of ``run`` calls becomes a few dozen messages.  Any other call of
the client carries what is buffered along (:meth:`Submitter.call_after`),
in the same message, so nothing is held back and a ``run`` followed by
``get_task_result`` costs one message to the controller.

Blocks grow as they get used up (from :data:`FIRST_BLOCK` to
:data:`LARGEST_BLOCK` ids) and the next one is reserved in the background
when half of the current one is gone, so a busy client rarely waits for ids.
Ids reserved but never used are skipped: they are this client's
alone, and the controller drops them when it disconnects or closes (see
:mod:`plait.kernel.controller.taskids`).

Errors: problems detectable locally (a malformed task, a recovery loop,
something that cannot be pickled) are raised by ``run`` before an id is
taken.  A submission the controller refuses (it should not happen) or that
is lost with the connection is remembered here: later calls naming its id
raise the reason (:meth:`Submitter.refusal`).  A task the controller cannot
read (a depend function it cannot unpickle) is not refused: it ends as
``failed`` at once and its result carries the error.

Nothing submitted may be lost when the program ends: :meth:`Submitter.drain`
sends whatever is buffered, then one more call, answered by the controller
only after everything sent before it was processed (calls keep their order
on a connection).  ``TaskClient.wait_for_send()`` and ``close()`` drain; so does the
process at exit, for every client still open: an ``atexit`` hook (for the
blocking clients, whose reactor runs in a daemon thread that exit would
simply stop) and a Twisted ``before shutdown`` trigger (for asynchronous
clients in a program that runs the reactor itself), both registered once per
process and waiting at most :data:`EXIT_TIMEOUT` seconds.  What cannot be
confirmed then is reported on stderr.

Threads: :meth:`Submitter.take_id` and :meth:`Submitter.enqueue` may be
called from any thread; every other method runs in the reactor thread.
"""

from __future__ import annotations

import atexit
import math
import sys
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _twisted_reactor
from twisted.python.failure import Failure

from plait.kernel.client import _base, _reactor
from plait.kernel.client._base import raise_outcome
from plait.wire.errors import PlaitConnectionError, PlaitWarning, TaskSubmissionError

reactor: Any = _twisted_reactor  # provides every IReactor* interface; typed by Twisted as a bare protocol

#: Ids reserved by the first block, and the largest block.
FIRST_BLOCK = 512
LARGEST_BLOCK = 65_536
#: Unanswered ``submit`` messages at most; more submissions wait and coalesce.
MAX_IN_FLIGHT = 1
#: While submissions keep coming (a burst), a ticker in the reactor thread sends
#: them every TICK seconds and ``run`` does not wake the reactor thread; the
#: ticker stops after IDLE_TICKS ticks without a submission.
TICK = 0.001
#: Submissions woken up closer than this make a burst, and start the ticker.
BURST = 0.001
IDLE_TICKS = 20
#: A ``submit`` message carries at most this many tasks, or about this many bytes.
MAX_MESSAGE_TASKS = 20_000
MAX_MESSAGE_BYTES = 4 << 20
#: Seconds the process waits at exit for its submissions to be confirmed.
EXIT_TIMEOUT = 10.0


class Submitter:
    """Task ids from reserved blocks, and the ordered, coalesced sending of tasks.

    ``call(method, *args)`` makes a remote call of the task interface (in the
    reactor thread) and returns a Deferred firing with its outcome's value.
    Every other call of the client goes through :meth:`call_after`.  With
    ``call_only(method, *args)`` (a call that gets no answer), submissions
    are sent one way: the controller reports a refused one as the task's
    failure, and they coalesce by the ticker alone.
    """

    def __init__(self, call: Callable[..., defer.Deferred],
                 call_only: Callable[..., None] | None = None):
        self._call = call
        # One-way submissions (``call_only``): the controller does not confirm
        # each one, and reports a refusal as the task's failure instead.
        self._call_only = call_only
        self._lock = threading.Lock()
        # -- guarded by _lock
        self._blocks: deque[list[int]] = deque()  # [next id, end]
        self._available = 0
        self._block_size = FIRST_BLOCK  # of the next reservation
        self._low = 0  # reserve more when fewer ids than this are left
        self._reserving = False
        self._buffer: list[tuple[int, bytes]] = []
        self._send_scheduled = False
        self._ticking = False
        self._woken = -math.inf  # when _auto_send last ran (reactor thread): never yet
        self._idle_ticks = 0
        # -- reactor thread only
        self._id_waiters: list[defer.Deferred] = []
        self._in_flight = 0
        self._refused: dict[int, Exception] = {}
        self._problems = 0  # submissions refused or lost so far ...
        self._reported = 0  # ... of which drain() has reported this many
        self._first_problem = ""  # the first reason not reported yet
        self._sent = 0  # messages carrying submissions sent so far; the controller
        self._confirmed = 0  # is known to have processed the first this many
        self._runs: set[defer.Deferred] = set()  # runs still preparing their task
        self.messages_sent = 0
        _live.add(self)
        _hook_exit()

    # -- ids ------------------------------------------------------------------
    def take_id(self) -> int | None:
        """The next reserved id, or None when none is left (any thread).

        Starts reserving the next block when the current one runs low.
        """
        with self._lock:
            taskid = None
            if self._blocks:
                block = self._blocks[0]
                taskid = block[0]
                block[0] += 1
                self._available -= 1
                if block[0] >= block[1]:
                    self._blocks.popleft()
            start = not self._reserving and self._available < self._low
            if start:
                self._reserving = True
        if start:
            reactor.callFromThread(self._reserve)
        return taskid

    def wait_for_id(self) -> defer.Deferred:
        """(reactor) A Deferred firing with the next id once one is reserved."""
        taskid = self.take_id()
        if taskid is not None:
            return defer.succeed(taskid)
        d: defer.Deferred = defer.Deferred()
        self._id_waiters.append(d)
        with self._lock:
            start = not self._reserving
            self._reserving = True
        if start:
            self._reserve()
        return d

    def reserve_first(self) -> defer.Deferred:
        """(reactor) Reserve the first block; a Deferred firing once it is there."""
        with self._lock:
            self._reserving = True
        return self._reserve()

    def _reserve(self) -> defer.Deferred:
        with self._lock:
            size = self._block_size

        def reserved(first: int) -> None:
            with self._lock:
                self._blocks.append([first, first + size])
                self._available += size
                self._low = size // 2
                self._block_size = min(size * 2, LARGEST_BLOCK)
                self._reserving = False
            self._serve_id_waiters()

        def failed(f: Failure) -> Failure:
            with self._lock:
                self._reserving = False
            waiters, self._id_waiters = self._id_waiters, []
            for d in waiters:
                d.errback(f)
            return f

        return self._call("reserve", size).addCallbacks(reserved, failed)

    def _serve_id_waiters(self) -> None:
        while self._id_waiters:
            taskid = self.take_id()
            if taskid is None:
                return
            self._id_waiters.pop(0).callback(taskid)

    # -- sending -------------------------------------------------------------------
    def enqueue(self, taskid: int, data: bytes) -> None:
        """Send ``data`` under ``taskid`` soon, after everything enqueued before (any thread).

        The first submission after a quiet spell wakes the reactor thread,
        which sends it at once and starts a ticker.  While the ticker runs,
        submissions wait for its next tick or for the client's next call,
        whichever comes first: a ``run`` then costs no thread wake-up, and a
        ``run`` followed by ``get_task_result`` travels as one message.
        """
        with self._lock:
            self._buffer.append((taskid, data))
            self._idle_ticks = 0
            wake = not self._ticking and not self._send_scheduled
            if wake:
                self._send_scheduled = True
        if wake:
            reactor.callFromThread(self._auto_send)

    def hurry(self) -> None:
        """(Any thread) Someone waits for what is buffered: send it now, not at
        the ticker's next tick."""
        with self._lock:
            if not self._buffer or self._send_scheduled:
                return
            self._send_scheduled = True
        reactor.callFromThread(self._auto_send)

    def _auto_send(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._send_scheduled = False
            # a ticker only for a burst (more waited, or the last wake-up was just
            # now): one call at a time (a blocking loop) costs a wake-up each anyway
            start = not self._ticking and (len(self._buffer) > 1
                                           or now - self._woken < BURST)
            self._ticking = self._ticking or start
        self._woken = now
        if self._in_flight < MAX_IN_FLIGHT:
            self.send_buffered()
        if start:
            reactor.callLater(TICK, self._tick)

    def _tick(self) -> None:
        with self._lock:
            if not self._buffer:
                self._idle_ticks += 1
                if self._idle_ticks >= IDLE_TICKS:
                    self._ticking = False  # from now on, enqueue wakes us
                    return
        if self._in_flight < MAX_IN_FLIGHT:
            self.send_buffered()
        reactor.callLater(TICK, self._tick)

    def _take(self) -> list[tuple[int, bytes]]:
        """The oldest buffered submissions that fit in one message (maybe none)."""
        with self._lock:
            batch: list[tuple[int, bytes]] = []
            size = 0
            for item in self._buffer:
                if batch and (len(batch) >= MAX_MESSAGE_TASKS
                              or size + len(item[1]) > MAX_MESSAGE_BYTES):
                    break
                batch.append(item)
                size += len(item[1])
            del self._buffer[:len(batch)]
        return batch

    def send_buffered(self) -> None:
        """(reactor) Send everything buffered now, in order."""
        while batch := self._take():
            self._send(batch)

    def call_after(self, method: str, *args: Any) -> defer.Deferred:
        """(reactor) Call ``method(*args)`` after everything buffered.

        The last of the buffered submissions ride in the same message
        (``submit_then``): a ``run`` followed by ``get_task_result`` costs
        one message, not two.  Fires with the method's value.
        """
        batch = self._take()
        while batch:
            following = self._take()
            if not following:
                break
            self._send(batch)
            batch = following
        if not batch:  # (an answer to it proves processing, not keeping: no confirmation)
            return self._call(method, *args)
        self.messages_sent += 1
        self._sent += 1
        d = self._confirming(self._call("submit_then", batch, method, list(args)))

        def split(value: Any) -> Any:
            refused, outcome = value
            self._refuse(refused)
            return raise_outcome(outcome)

        def lost(f: Failure) -> Failure:
            self._lose(batch, f)
            return f

        return d.addCallbacks(split, lost)

    def _send(self, batch: list[tuple[int, bytes]]) -> None:
        if self._call_only is not None:
            self.messages_sent += 1
            self._sent += 1
            try:
                self._call_only("submit_one_way", batch)
            except Exception:
                self._lose(batch, Failure())
            return
        self._in_flight += 1
        self.messages_sent += 1
        self._sent += 1
        d = self._confirming(self._call("submit", batch))

        def done(_: Any) -> None:
            self._in_flight -= 1
            with self._lock:
                more = bool(self._buffer)
            if more and self._in_flight < MAX_IN_FLIGHT:
                self.send_buffered()

        d.addCallbacks(self._refuse, lambda f: self._lose(batch, f)).addBoth(done)

    def _confirming(self, d: defer.Deferred) -> defer.Deferred:
        """``d`` is a submission made now: its answer proves that the controller
        accepted every submission sent before (calls keep their order) and
        keeps them where a controller started again finds them."""
        sent = self._sent

        def answered(result: Any) -> Any:
            if not (isinstance(result, Failure) and result.check(PlaitConnectionError)):
                self._confirmed = max(self._confirmed, sent)
            return result

        return d.addBoth(answered)

    def _refuse(self, refused: list) -> None:
        for taskid, reason in refused:
            if taskid is None:  # accepted, but the controller could not keep them on disk
                warnings.warn(f"plait: the controller says of tasks just submitted: {reason}",
                              PlaitWarning, stacklevel=2)
            else:
                self._problem(taskid, f"task {taskid} was refused by the controller: {reason}")

    def _lose(self, batch: list[tuple[int, bytes]], f: Failure) -> None:
        for taskid, _ in batch:
            self._problem(taskid, f"task {taskid} may not have reached the controller: {f.value}")

    def _problem(self, taskid: int, reason: str) -> None:
        self._refused[taskid] = TaskSubmissionError(reason)
        if self._problems == self._reported:
            self._first_problem = reason
        self._problems += 1

    # -- draining ------------------------------------------------------------------
    def track_run(self, d: defer.Deferred) -> None:
        """(reactor) ``d`` fires once a ``run`` has enqueued its task (or failed):
        :meth:`drain` waits for it."""
        if not d.called:
            self._runs.add(d)

            def done(result: Any) -> Any:
                self._runs.discard(d)
                return result

            d.addBoth(done)

    @defer.inlineCallbacks
    def drain(self) -> Any:
        """(reactor) Make sure what was submitted so far has reached the controller.

        Waits for runs still preparing their task, sends whatever is
        buffered at once, then makes one more call, which the controller
        answers only after processing everything sent before it.  Fires with
        None; fails with TaskSubmissionError when submissions were refused
        or lost since the last drain (saying how many and the first
        reason), or when the controller could not be reached to confirm.
        """
        while self._runs:
            yield defer.DeferredList(list(self._runs))
        self.send_buffered()
        target = self._sent
        if self._confirmed < target:
            try:
                self._refuse((yield self._confirming(self._call("submit", []))))
            except Exception as exc:
                if self._confirmed < target:
                    raise TaskSubmissionError(
                        f"could not confirm that the tasks submitted reached the "
                        f"controller: {exc}"
                    ) from None
        problems, first = self._problems - self._reported, self._first_problem
        self._reported = self._problems
        if problems:
            raise TaskSubmissionError(
                f"{problems} task submission(s) failed; the first: {first}"
            )

    def connection_lost(self, why: str, all_finished: bool = False) -> None:
        """(reactor) The session these ids were reserved in is gone: drop them,
        and count what is still buffered as lost (its ids were of that session).
        The next id is reserved in the next session.  ``all_finished``: every
        task sent has its result (the controller had them all: nothing unsure)."""
        with self._lock:
            self._blocks.clear()
            self._available = 0
            self._block_size = FIRST_BLOCK
            self._low = 0
            lost, self._buffer = self._buffer, []
        for taskid, _ in lost:
            self._problem(taskid, f"task {taskid} was not submitted: {why}")
        if self._call_only is not None and self._confirmed < self._sent and not all_finished:
            # One-way submissions of that session that no answer acknowledged: kept or
            # not, no one can say now (the results path asks the hub for each, and
            # fails those it does not know); wait_for_send says so, once.
            self._problem(-1, f"{self._sent - self._confirmed} submission message(s) sent "
                              f"before the connection was lost were not acknowledged: "
                              f"their results say whether the controller kept them")
        if self._call_only is not None:
            self._confirmed = self._sent

    def close(self) -> None:
        """(reactor) This client is closed: the exit hook forgets it."""
        _live.discard(self)

    # -- refusals ------------------------------------------------------------------
    def refusal(self, taskid: Any) -> Exception | None:
        """(reactor) Why the submission of ``taskid`` failed, or None."""
        try:
            return self._refused.get(taskid)
        except TypeError:
            return None

    def forget(self, taskids: list[int] | None) -> None:
        """(reactor) Forget refusals (all, or of ``taskids``)."""
        if taskids is None:
            self._refused.clear()
        else:
            for taskid in taskids:
                self._refused.pop(taskid, None)



# -- at exit -------------------------------------------------------------------------
#: Every open client's submitter.  Weak: one with submissions not confirmed yet
#: has a call in flight, whose callbacks keep it alive.
_live: weakref.WeakSet[Submitter] = weakref.WeakSet()
_hooked = False


def _hook_exit() -> None:
    """Register the exit hooks, once per process."""
    global _hooked
    if _hooked:
        return
    _hooked = True
    atexit.register(_drain_at_exit)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: drain_all())


def drain_all(timeout: float | None = None, clock: Any = reactor) -> defer.Deferred:
    """(reactor) Drain every open client, reporting on stderr what could not be
    confirmed; a Deferred firing with None when done or after ``timeout``
    seconds of ``clock`` (default :data:`EXIT_TIMEOUT`)."""
    if timeout is None:
        timeout = EXIT_TIMEOUT
    submitters = list(_live)
    if not submitters:
        return defer.succeed(None)
    done: defer.Deferred = defer.Deferred()

    def finish(results: list) -> None:
        for ok, value in results:
            if not ok:
                _warn(str(value.value))
        if not done.called:
            done.callback(None)

    def expire() -> None:
        if not done.called:
            _warn(f"gave up after {timeout:g} s waiting for the controller to confirm the "
                  f"tasks submitted: some may not have reached it")
            done.callback(None)

    timer = clock.callLater(timeout, expire)
    done.addBoth(lambda result: timer.cancel() if timer.active() else None)
    defer.DeferredList([s.drain() for s in submitters], consumeErrors=True).addCallback(finish)
    return done


def _warn(message: str) -> None:
    sys.stderr.write(f"plait: {message}\n")
    sys.stderr.flush()


def _drain_at_exit() -> None:
    """At exit: wait (bounded) until the blocking clients' submissions are confirmed."""
    if not _live or not _reactor.running_in_thread():
        return  # nothing submitted, or the program runs the reactor (see drain_all)
    _base.EXITING = True  # a client whose controller went does not connect again now
    try:
        _reactor.call(drain_all, timeout=EXIT_TIMEOUT + 1.0)
    except Exception as exc:
        _warn(f"could not confirm the tasks submitted at exit: {exc}")
