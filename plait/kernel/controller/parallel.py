"""The service behind ``plait.parallel``'s clients: sessions, engines, the hub.

Each client is a :class:`ParallelSession`: a task session (its ids, its
waiting calls) whose tasks are of the later generation (their records go to
the hub; no depend runs here) and whose finished records are handed back to
it through :meth:`ParallelSession.results`, a long poll: the call waits
until at least one of the session's tasks has finished, then answers every
record ready, gathered over one turn of the reactor.  A client on a channel
asks for them to be pushed instead (:meth:`ParallelSession.push_results`):
the same news, handed over at the end of each turn that had some, which
saves the client a call and the controller a wake-up per batch.  Direct views submit
pinned tasks, load-balanced views scheduled ones: both are tasks of the one
task controller, shared with the kernel generation's TaskClients.
"""

from __future__ import annotations

import time
import uuid as uuid_module
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _twisted_reactor
from twisted.logger import Logger
from zope.interface import implementer

from plait.interfaces.parallel import IParallel, IParallelSession
from plait.kernel.controller.tasksession import TaskSession
from plait.wire.errors import InvalidTaskID, RemoteFailure, TaskSubmissionError
from plait.wire.records import TaskResultRecord
from plait.wire.serialize import serialize

log = Logger()
reactor: Any = _twisted_reactor  # provides every IReactor* interface; typed by Twisted as a bare protocol

#: What :meth:`ParallelSession.results` fires with: ``(records, engine ids or None, output)``.
News = tuple[list[TaskResultRecord], "list[int] | None", list[tuple[int, int, str, str]]]


@implementer(IParallelSession)
class ParallelSession(TaskSession):
    """One client of the later generation (see the module documentation)."""

    def __init__(self, service: ParallelService):
        super().__init__(service.tasks)
        self.service = service
        self.uuid = str(uuid_module.uuid4())
        self._ready: list[TaskResultRecord] = []
        self._output: list[tuple[int, int, str, str]] = []  # what running tasks printed
        self._engines_changed = False
        self._poll: defer.Deferred | None = None
        self._push: Callable[[News], None] | None = None
        self._answering = False
        service.registry.add_observer(self)

    def submit(self, tasks: Iterable[tuple[int, bytes]], owner: Any = None,
               later: bool = True) -> list[tuple[int, str]]:
        """Submit tasks of the later generation (``later`` is always True here).

        Returns the refused ones, ``[(taskid, reason)]``; each also comes back
        through :meth:`results` as a failed record (TaskSubmissionError), as
        the client sends its submissions without waiting for this answer.
        """
        refused = self._tasks.submit(tasks, self._owner(owner), later=True)
        for taskid, reason in refused:
            failure = RemoteFailure.from_exception(
                TaskSubmissionError(f"task {taskid} was refused by the controller: {reason}"))
            now = time.time()
            self._ready.append(TaskResultRecord(taskid=taskid, status="failed",
                                                payload=serialize(failure), submitted=now,
                                                completed=now))
        if refused:
            self._wake()
        return refused

    # -- the way back -----------------------------------------------------------------
    def task_finished(self, record: TaskResultRecord) -> None:
        """(The task controller) one of this session's tasks finished."""
        if self.closed:
            return
        self._ready.append(record)
        self._wake()

    def task_output(self, taskid: int, engine_id: int, name: str, text: str) -> None:
        """(The task controller) a task of this session running on ``engine_id``
        printed ``text`` to its stream ``name``."""
        if self.closed:
            return
        last = self._output[-1] if self._output else None
        if last is not None and last[:3] == (taskid, engine_id, name):
            self._output[-1] = (taskid, engine_id, name, last[3] + text)
        else:
            self._output.append((taskid, engine_id, name, text))
        self._wake()

    def engine_added(self, engine_id: int) -> None:
        """(The registry) the engines changed: the client hears of it."""
        self._engines_changed = True
        self._wake()

    engine_removed = engine_added

    def _wake(self) -> None:
        if (self._poll is not None or self._push is not None) and not self._answering:
            self._answering = True
            reactor.callLater(0, self._answer)  # gather what happens in this turn

    def push_results(self, deliver: Callable[[News], None]) -> None:
        """Hand the news to ``deliver`` from now on (see :class:`IParallelSession`)."""
        if self.closed:
            raise RuntimeError("this session is closed")
        if self._poll is not None:
            raise RuntimeError("a results() call is waiting: news cannot be pushed too")
        self._push = deliver
        if self._ready or self._output or self._engines_changed:
            self._wake()

    def results(self) -> defer.Deferred:
        if self.closed:
            return defer.fail(RuntimeError("this session is closed"))
        if self._poll is not None:
            return defer.fail(RuntimeError("a results() call is waiting already"))
        if self._push is not None:
            return defer.fail(RuntimeError("this session's news is pushed: no results() call"))
        if self._ready or self._output or self._engines_changed:
            return defer.succeed(self._take())
        self._poll = defer.Deferred(canceller=lambda _: self._forget_poll())
        return self._poll

    def _take(self) -> News:
        ready, self._ready = self._ready, []
        output, self._output = self._output, []
        engines = self.service.get_ids() if self._engines_changed else None
        self._engines_changed = False
        return ready, engines, output

    def _forget_poll(self) -> None:
        self._poll = None

    def _answer(self) -> None:
        self._answering = False
        if self._push is not None:
            if self._ready or self._output or self._engines_changed:
                try:
                    self._push(self._take())
                except Exception:  # the records are lost to this client: say so
                    log.failure("could not push results to a client of session {uuid}",
                                uuid=self.uuid)
            return
        poll, self._poll = self._poll, None
        if poll is not None and (self._ready or self._output or self._engines_changed):
            poll.callback(self._take())
        elif poll is not None:
            self._poll = poll

    def resubmit(self, taskids: list[int]) -> defer.Deferred:
        return self.service.resubmit(list(taskids), self)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self.service.registry.remove_observer(self)
        self._ready = []
        self._push = None
        if self._poll is not None:
            self._poll.cancel()


@implementer(IParallel)
class ParallelService:
    """Sessions over ``tasks`` (the TaskController), with ``registry``, ``hub``
    and ``multiengine`` (for ``shutdown``)."""

    def __init__(self, tasks: Any, registry: Any, hub: Any, multiengine: Any,
                 db: str = "memory"):
        self.tasks = tasks
        self.registry = registry
        self.hub = hub
        self.multiengine = multiengine
        self.db = db
        #: The status page's URL (token included), once the controller serves it.
        self.dashboard_url: str | None = None

    def session(self) -> ParallelSession:
        return ParallelSession(self)

    def get_ids(self) -> list[int]:
        return self.registry.get_ids()

    def wait_for_engines(self, n: int) -> defer.Deferred:
        return self.registry.wait_for_engines(n)

    def info(self) -> dict[str, Any]:
        info = dict(self.tasks.info())
        info.pop("marks", None)
        info.update(prefix=self.hub.prefix, db=self.db, ids=self.registry.get_ids(),
                    dashboard_url=self.dashboard_url)
        return info

    def queue_status(self, verbose: bool = False) -> dict[Any, Any]:
        """ipyparallel's: per engine ``queue`` (direct requests and commands
        waiting or running), ``tasks`` (load-balanced ones), ``completed``; and
        ``unassigned``; with ``verbose`` lists of msg_ids instead of counts."""
        return self.tasks.engine_status(verbose, name=self.hub.msg_id)

    def purge(self, taskids: list[int] | None) -> defer.Deferred:
        d = self.hub.purge(taskids)
        return d.addCallback(lambda _: self.tasks.forget(taskids))

    def shutdown(self, targets: list[int] | None, hub: bool) -> defer.Deferred:
        return self.multiengine.kill(bool(hub), "all" if targets is None else targets, True)

    def setup(self, lines: str) -> defer.Deferred:
        d = self.multiengine.setup(lines, "all", True)

        def ran(replies: list) -> list[int]:
            failed = [engine_id for engine_id, ok, _ in replies if not ok]
            if failed:
                raise RuntimeError(f"the setup code failed on engines {failed}: see what "
                                   f"rc[{failed[0]}].execute(...) of it says")
            return [engine_id for engine_id, *_ in replies]

        return d.addCallback(ran)

    def send_signal(self, signum: int, targets: list[int] | None) -> defer.Deferred:
        d = self.multiengine.send_signal(signum, "all" if targets is None else targets, True)
        return d.addCallback(lambda replies: [engine_id for engine_id, *_ in replies])

    def resubmit(self, taskids: list[int], owner: Any) -> defer.Deferred:
        """Submit the finished tasks ``taskids`` again, for ``owner``: the new ids."""

        def again(records: list[dict | None]) -> list[int]:
            requests = []
            for taskid, record in zip(taskids, records, strict=True):
                if record is None:
                    raise InvalidTaskID(f"no task {self.hub.msg_id(taskid)}: never submitted, "
                                        f"or purged")
                if record["status"] is None:
                    raise ValueError(f"task {self.hub.msg_id(taskid)} has not finished: only "
                                     f"finished tasks can be resubmitted")
                if not record.get("request"):
                    raise ValueError(f"task {self.hub.msg_id(taskid)} cannot be resubmitted: "
                                     f"its request was not kept")
                requests.append(record["request"])
            return self.tasks.submit_new(requests, owner, later=True)

        return self.hub.records(taskids).addCallback(again)
