"""The connection of a ``plait.parallel`` Client to its controller (Twisted API).

A :class:`ParallelConnection` is a session of the controller, as the
kernel generation's TaskClient is (:class:`~plait.kernel.client._session.SessionClient`:
ids reserved in blocks, submissions coalesced, confirmed at
``wait_for_send``, ``close`` and exit).  On top of that the controller sends
it the records of this session's tasks as they finish: on a channel it
pushes them (``push_results``: the client's end of the channel serves
``results_ready`` and nothing else); on foolscap alone the connection keeps
one call ``results()`` waiting at the controller, a long poll.  Each record
goes to the listener registered for its task id (an AsyncResult).
Its other methods are the hub's queries, each a Deferred.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from plait.interfaces.parallel import RIParallel, RIParallelListener
from plait.kernel.client._base import asynchronous
from plait.kernel.client._session import SessionClient
from plait.security import PARALLEL_FURL
from plait.wire.errors import PlaitConnectionError
from plait.wire.records import TaskResultRecord, decode_result, decode_results
from plait.wire.serialize import dumps_plain, loads_plain_many

log = Logger()

Listener = Callable[[TaskResultRecord], None]


class ParallelConnection(SessionClient):
    """A session of ``ipcontroller-client.furl`` (see the module documentation)."""

    furl_name = PARALLEL_FURL
    user_name = "plait.parallel.Client"
    remote_interface = RIParallel
    # Submissions are confirmed (one-way ones cost the controller more messages under
    # load, for a few percent of latency); a refused one also comes back as a failed record.
    one_way_submissions = True

    def __init__(self, remote: Any, source: str = ""):
        super().__init__(remote, source)
        self.info_at_connect: dict[str, Any] = {}
        #: The engine ids as last heard from the controller (kept up to date by it).
        self.engine_ids: list[int] = []
        self._listeners: dict[int, Listener] = {}
        self._output_listeners: dict[int, Callable[[int, int, str, str], None]] = {}
        self._early: dict[int, TaskResultRecord] = {}  # records no one listened for yet

    @defer.inlineCallbacks
    def _started(self) -> Any:
        yield super()._started()
        self.info_at_connect = yield self._outcome("info")
        self.engine_ids = list(self.info_at_connect["ids"])
        yield self._hear_results()
        return self

    @defer.inlineCallbacks
    def _hear_results(self) -> Any:
        """Have the news pushed (on a channel), else keep a long poll waiting."""
        channel = self._remote
        if hasattr(channel, "bind"):
            channel.bind(_ResultsListener(self))
            try:
                yield self._outcome("push_results")
                return
            except Exception as exc:  # (a controller that cannot push): poll
                log.info("results are not pushed ({e}): polling", e=exc)
        self._poll()

    @defer.inlineCallbacks
    def _rejoined(self) -> Any:
        """Connected again (the controller restarted): a new session, and the
        long poll again.  The tasks this client still waits for are asked of
        the hub, which has them (a controller started again by its keeper took
        its queue back): each comes back when it finishes; one the controller
        does not know any more fails, saying so."""
        yield super()._rejoined()
        self.info_at_connect = yield self._outcome("info")
        self.engine_ids = list(self.info_at_connect["ids"])
        yield self._hear_results()
        waiting = sorted(self._listeners)
        if waiting:
            self._ask_hub(waiting)

    def _ask_hub(self, taskids: list[int]) -> None:
        lost = Failure(PlaitConnectionError("the controller restarted, and no longer knows "
                                            "this task (it had not recorded it yet)"))

        def answer(taskid: int, record: TaskResultRecord) -> None:
            if taskid in self._listeners:  # (asked more than once: the first answer only)
                self._deliver(record)

        def found(records: list[TaskResultRecord | None]) -> None:
            for taskid, record in zip(taskids, records, strict=True):
                if record is None:
                    answer(taskid, _lost_record(taskid, lost))
                elif record.status != "pending":
                    answer(taskid, record)
                else:  # each comes as it finishes, not once the slowest did
                    self.records([taskid], block=True).addCallbacks(
                        lambda rs, t=taskid: answer(
                            t, rs[0] if rs[0] is not None else _lost_record(t, lost)),
                        self._unanswered, errbackArgs=([taskid],))

        self.records(taskids).addCallbacks(found, self._unanswered, errbackArgs=(taskids,))

    def _unanswered(self, failure: Failure, taskids: list[int]) -> None:
        """A question to the hub about ``taskids`` got no answer.  Cut off by a
        lost link, they stay awaited: the link connects again, and then the hub
        is asked again for every task still awaited (:meth:`_rejoined`), however
        many times the controller goes (its keeper gives up on a controller that
        dies too often: connecting again fails then).  Otherwise (closed, or
        connecting again failed) each fails, saying why."""
        if (failure.check(PlaitConnectionError) and not self._closed
                and self._furl is not None
                and "could not connect again" not in str(failure.value)):
            reactor.callLater(0, self._recover)  # (nothing if the link is up again)
            return
        self._fail_listeners(failure, taskids)

    def _all_finished(self) -> bool:
        return not self._listeners  # (a task's listener is registered before it is sent)

    def _connection_lost(self) -> None:
        super()._connection_lost()
        if self._listeners and not self._closed and self._furl is not None:
            # someone waits for results: connect again now (the long poll is gone),
            # not at the next call
            reactor.callLater(0, self._recover)

    def _recover(self) -> None:
        if self._closed or not self._down:
            return
        self._reconnect().addErrback(lambda f: self._fail_listeners(f, sorted(self._listeners)))

    @property
    def prefix(self) -> int:
        """The number naming the controller in message ids."""
        return int(self.info_at_connect["prefix"])

    # -- records coming back --------------------------------------------------------
    def listen(self, taskid: int, listener: Listener) -> None:
        """(Any thread, before the task is submitted; or the reactor thread) call
        ``listener(record)`` in the reactor thread once task ``taskid`` finished."""
        record = self._early.pop(taskid, None)
        if record is not None:
            listener(record)
        else:
            self._listeners[taskid] = listener

    def listen_output(self, taskid: int, listener: Callable[[int, int, str, str], None]
                      ) -> None:
        """(Any thread, before the task is submitted) call ``listener(taskid,
        engine_id, name, text)`` in the reactor thread with what task ``taskid``
        prints while it runs (one listener may serve many tasks)."""
        self._output_listeners[taskid] = listener

    def _poll(self) -> None:
        if self._closed:
            return
        d = self._outcome("results")
        d.addCallbacks(self._delivered, self._poll_failed)

    def _delivered(self, news: tuple[bytes, list[int] | None, list]) -> None:
        self.news(*news)
        self._poll()

    def news(self, encoded: bytes, engines: list[int] | None, output: list) -> None:
        """(The reactor thread) records, engine ids (None: unchanged) and output
        from the controller: each record goes to its listener."""
        if engines is not None:
            self.engine_ids = list(engines)
        for taskid, engine_id, name, text in output:
            hear = self._output_listeners.get(taskid)
            if hear is not None:
                try:
                    hear(taskid, engine_id, name, text)
                except Exception:
                    log.failure("an output listener failed")
        try:
            records = decode_results(encoded)
        except Exception:
            log.failure("unreadable records from the controller")
            records = []
        for record in records:
            self._deliver(record)

    def _deliver(self, record: TaskResultRecord) -> None:
        self._output_listeners.pop(record.taskid, None)
        listener = self._listeners.pop(record.taskid, None)
        if listener is None:
            self._early[record.taskid] = record
            return
        try:
            listener(record)
        except Exception:
            log.failure("a result listener failed")

    def _poll_failed(self, failure: Failure) -> None:
        if self._closed:
            return
        if self._furl is not None and failure.check(PlaitConnectionError):
            return  # the link went: the results come once connected again (_rejoined)
        self._fail_listeners(failure, sorted(self._listeners))

    def _fail_listeners(self, failure: Failure, taskids: list[int]) -> None:
        """The results of ``taskids`` will not come: each fails, saying why."""
        taskids = [t for t in taskids if t in self._listeners]
        if taskids:
            log.warn("the connection to the controller was lost: {n} results will not come",
                     n=len(taskids))
        for taskid in taskids:
            self._deliver(_lost_record(taskid, failure))

    def outstanding(self) -> int:
        """How many submitted tasks this connection still waits for."""
        return len(self._listeners)

    # -- the hub and the engines -------------------------------------------------------
    @asynchronous
    def info(self) -> defer.Deferred:
        return self._send("info")

    @asynchronous
    def get_ids(self) -> defer.Deferred:
        return self._send("get_ids").addCallback(self._remember_ids)

    @asynchronous
    def wait_for_engines(self, n: int) -> defer.Deferred:
        return self._send("wait_for_engines", n).addCallback(self._remember_ids)

    def _remember_ids(self, ids: list[int]) -> list[int]:
        self.engine_ids = list(ids)
        return ids

    @asynchronous
    def records(self, taskids: list[int], block: bool = False) -> defer.Deferred:
        """A Deferred firing with the TaskResultRecords of ``taskids`` (``status``
        'pending' while unfinished, None for unknown ids)."""
        d = self._send("records", list(taskids), bool(block))
        return d.addCallback(lambda rows: [None if r is None else decode_result(r) for r in rows])

    @asynchronous
    def result_status(self, taskids: list[int]) -> defer.Deferred:
        return self._send("result_status", list(taskids))

    @asynchronous
    def history(self) -> defer.Deferred:
        return self._send("history")

    @asynchronous
    def query_rows(self, query: dict, keys: list[str] | None) -> defer.Deferred:
        """A Deferred firing with the hub's ``(columns, rows)`` matching ``query``
        (with ``keys``, or all): each row a tuple in ``columns`` order."""
        try:
            data = dumps_plain(query, "the query")
        except Exception:
            return defer.fail()
        return self._send("query_rows", data, list(keys or []), keys is None).addCallback(
            loads_plain_many)

    @asynchronous
    def purge(self, taskids: list[int] | None) -> defer.Deferred:
        return self._send("purge", taskids is None, list(taskids or []))

    @asynchronous
    def resubmit(self, taskids: list[int]) -> defer.Deferred:
        return self._send("resubmit", list(taskids))

    @asynchronous
    def queue_status(self, verbose: bool = False) -> defer.Deferred:
        return self._send("queue_status", bool(verbose))

    @asynchronous
    def abort(self, taskids: list[int]) -> defer.Deferred:
        """Abort tasks; a Deferred firing with the ids of those finished already."""
        return self._send("abort", list(taskids))

    @asynchronous
    def shutdown(self, targets: list[int] | None, hub: bool) -> defer.Deferred:
        return self._send("shutdown", targets is None, list(targets or []), bool(hub))

    @asynchronous
    def setup(self, lines: str) -> defer.Deferred:
        """A Deferred firing with the ids of the engines the code ran on now."""
        return self._send("setup", lines)

    @asynchronous
    def send_signal(self, signum: int, targets: list[int] | None) -> defer.Deferred:
        """A Deferred firing with the ids of the engines signalled."""
        return self._send("send_signal", int(signum), targets is None, list(targets or []))


@implementer(RIParallelListener)
class _ResultsListener(Referenceable):  # type: ignore[misc]
    """The client's end of its channel: the news the controller pushes."""

    def __init__(self, connection: ParallelConnection):
        self._connection = connection

    def remote_results_ready(self, records: bytes, engines: list[int] | None,
                             output: list) -> None:
        self._connection.news(records, engines, output)


#: The status of a record standing for a result that will not come (the client's own).
LOST = "lost"


def _lost_record(taskid: int, failure: Failure) -> TaskResultRecord:
    """The record standing for a result that will not come: the connection is gone
    (``stderr`` says why)."""
    why = (f"lost the connection to the controller before task {taskid} finished: "
           f"{failure.value}")
    return TaskResultRecord(taskid=taskid, status=LOST, payload=b"", stderr=why)
