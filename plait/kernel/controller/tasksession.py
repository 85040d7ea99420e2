"""One client's view of the Task service: its ids, its waiting calls.

``TaskController.session()`` returns a :class:`TaskSession`.  Each client
connection gets one (the adapter opens it with the connection and closes it
when the connection goes away), so that:

* the task ids it reserves are its own: it is their *owner* (see
  :mod:`plait.kernel.controller.taskids`), and no other session may submit
  under them;
* its blocking calls (``get_task_result(block=True)``, ``get_task_results``,
  ``barrier``) are its own: :meth:`TaskSession.close` cancels those still
  waiting and drops the ids it reserved and did not use, so nothing a
  departed client asked for stays in the controller.

Everything else (the tasks, their results, the scheduler) is shared by all
sessions: a session is a view, not a copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from plait.interfaces.task import ITaskController, ITaskSession
from plait.kernel.controller.taskstate import acknowledgment


@implementer(ITaskSession)
class TaskSession:
    """The :class:`ITaskSession` of one client; :meth:`close` ends it.

    An ``owner`` given to a method is used as given; by default it is the
    session itself.
    """

    def __init__(self, tasks: ITaskController):
        self._tasks = tasks
        self._waits: set[defer.Deferred] = set()
        self.closed = False

    def _owner(self, owner: Any) -> Any:
        return self if owner is None else owner

    def _wait(self, d: defer.Deferred) -> defer.Deferred:
        """Keep ``d`` (a call that may wait long) until it fires, to cancel it on close."""
        if d.called:
            return d
        self._waits.add(d)

        def done(result: Any) -> Any:
            self._waits.discard(d)
            return result

        return d.addBoth(done)

    # -- ITaskController ---------------------------------------------------------------
    def reserve(self, n: int, owner: Any = None) -> int:
        return self._tasks.reserve(n, self._owner(owner))

    def submit(self, tasks: Iterable[tuple[int, bytes]], owner: Any = None,
               later: bool = False) -> list[tuple[int, str]]:
        return self._tasks.submit(tasks, self._owner(owner), later)

    def submit_acknowledged(self, tasks: Iterable[tuple[int, bytes]], owner: Any = None,
                            later: bool = False) -> defer.Deferred:
        try:
            refused = self.submit(tasks, owner, later)  # (a subclass's own submit)
        except Exception:
            return defer.fail()
        return self.durable().addCallback(lambda problem: acknowledgment(refused, problem))

    def durable(self) -> defer.Deferred:
        return self._tasks.durable()

    def release(self, owner: Any = None) -> int:
        return self._tasks.release(self._owner(owner))

    def get_task_result(self, taskid: int, block: bool = False) -> defer.Deferred:
        return self._wait(self._tasks.get_task_result(taskid, block))

    def get_task_results(self, taskids: Iterable[int], block: bool = False) -> defer.Deferred:
        return self._wait(self._tasks.get_task_results(taskids, block))

    def barrier(self, taskids: int | Iterable[int]) -> defer.Deferred:
        return self._wait(self._tasks.barrier(taskids))

    def abort(self, taskid: int) -> defer.Deferred:
        return self._tasks.abort(taskid)

    def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        return self._tasks.queue_status(verbose)

    def spin(self) -> None:
        return self._tasks.spin()

    def clear(self, taskids: int | Iterable[int] | None = None,
              all_clients: bool = False) -> int:
        """Forget finished tasks: ``taskids``, else all of this session's, or (with
        ``all_clients``) every client's."""
        return self._tasks.clear(taskids, None if all_clients else self)

    def info(self) -> dict[str, Any]:
        return self._tasks.info()

    def session(self) -> TaskSession:
        """Another session of the same service."""
        return self._tasks.session()

    # -- the end -------------------------------------------------------------------------
    def close(self) -> None:
        """The client went away: drop its unused ids, cancel its waiting calls
        (they fail with CancelledError).  Closing again does nothing."""
        if self.closed:
            return
        self.closed = True
        self.release()
        for d in list(self._waits):
            d.cancel()
