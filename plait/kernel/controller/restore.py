"""Taking back the tasks of a controller that died (``ipcontroller --restore``).

The hub's SQLite store keeps the record of every task accepted and not
finished (its ``queued`` table: see :mod:`.hubstore`).  A controller started
with ``restore`` reads them as the store opens, before it listens (so that
no client asks for a task before it is known again), and the task
controller takes them back under
their ids (:meth:`~.task.TaskController.readmit`), with the outcomes of the
finished tasks they depend on, read from the hub, so that their graph
dependencies hold as before.  They have no owner: their results go to the
hub, where every client finds them (a client of the last run asks for the
tasks it waits for once it has connected again).  An engine that joins
again tells what it finished in its last seconds (the reply may have died
with the controller): a task it finished successfully is taken back
finished, with that result, and does not run again.  Any other task that
was running when the controller died runs again.

The tasks wait until the engines the last run had registered when it died
(or was still waiting for, itself a controller started again) have rejoined
(they do within a second or two, or once the task they run ends), for
:data:`ALL_BACK_WAIT` seconds at most, so that tasks with ``targets`` or
``follow`` find their engines; then they are taken back together, in id order (so a task's graph
dependencies among them are known first).  A task pinned to one engine (a
direct view's) that is still missing waits for it up to :data:`REJOIN_WAIT`
seconds, then fails with InvalidEngineID, as a task pinned to an engine
that is not there does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as _twisted_reactor
from twisted.logger import Logger

from plait.wire.task import decode_task

reactor: Any = _twisted_reactor  # provides every IReactor* interface; typed by Twisted as a bare protocol

#: Seconds the restored tasks wait for every engine of the last run to rejoin.
ALL_BACK_WAIT = 10.0
#: Seconds a restored task pinned to an engine waits for that engine to rejoin.
REJOIN_WAIT = 60.0

log = Logger()


class Restorer:
    """Takes back the queued tasks of the last run into ``tasks`` (a TaskController)."""

    def __init__(self, hub: Any, tasks: Any, registry: Any, clock: Any = None):
        self.hub = hub
        self.tasks = tasks
        self.registry = registry
        self.clock = clock or reactor
        self._awaiting: dict[int, list[tuple[int, bytes, bool]]] = {}  # engine id -> tasks
        self._outcomes: dict[int, tuple[bool, int | None]] = {}
        self._deadline: Any = None
        self._all_back: Any = None
        self._rows: list[tuple[int, bytes, bool]] | None = None
        self._expected: set[int] = set()
        self._ran: dict[int, tuple[int, tuple]] = {}  # taskid -> (engine id, reply entry)

    def restore(self) -> int:
        """Take back the queue of the last run (read by the store as it opened)
        once its engines are back; how many tasks there are."""
        rows, found = self.hub.store.left_queued
        if not rows:
            self._stop_awaiting()
            return 0
        self._outcomes = {r["id"]: (r["status"] == "succeeded", r["engine_id"])
                          for r in found.values() if r["status"] is not None}
        self.hub.restored(rows)
        self._rows = [(row["id"], row["request"] or b"", row.get("kind") == "later")
                      for row in rows]
        self._expected = set(getattr(self.registry, "last_registered", ()))
        self.registry.add_observer(self)
        self._all_back = self.clock.callLater(ALL_BACK_WAIT, self._take_back)
        self._check()
        log.info("taking back {n} tasks of the last run once its engines {e} are back",
                 n=len(rows), e=sorted(self._expected))
        return len(rows)

    def _check(self) -> None:
        if self._rows is not None and self._expected <= set(self.registry.get_ids()):
            self._take_back()

    def _take_back(self) -> None:
        if self._rows is None:
            return
        if self._all_back is not None and self._all_back.active():
            self._all_back.cancel()
        rows, self._rows = self._rows, None
        now: list[tuple[int, bytes, bool]] = []
        for item in rows:
            engine = _pinned_to(item[1], item[2])
            if engine is not None and engine not in self.registry:
                self._awaiting.setdefault(engine, []).append(item)
            else:
                now.append(item)
        self.tasks.readmit(now, self._outcomes, self._ran)
        self._stop_awaiting(keep=self._awaiting)
        if self._awaiting:
            self._deadline = self.clock.callLater(REJOIN_WAIT - ALL_BACK_WAIT, self._give_up)
        else:
            self._done()

    # -- registry observer ----------------------------------------------------------------
    def engine_ran(self, engine_id: int, ran: list[tuple[int, tuple]]) -> None:
        """An engine joining again finished these tasks (see the module documentation):
        the successes with their value inline are kept for the taking back."""
        if self._rows is None and not self._awaiting:
            return  # taken back already: those tasks run again
        for taskid, entry in ran:
            ok, payload, _seconds, stash, _meta = entry
            if ok is True and isinstance(payload, bytes) and stash is None:
                self._ran[taskid] = (engine_id, entry)
        log.info("engine {e} reported {n} tasks it finished as the last run ended",
                 e=engine_id, n=len(ran))

    def engine_added(self, engine_id: int) -> None:
        if self._rows is not None:
            self._check()
            return
        items = self._awaiting.pop(engine_id, None)
        if items:
            self.tasks.readmit(items, self._outcomes, self._ran)
        if not self._awaiting:
            self._done()

    def engine_removed(self, engine_id: int) -> None:
        pass

    def properties_changed(self, engine_id: int) -> None:
        pass

    def _give_up(self) -> None:
        self._deadline = None
        waiting, self._awaiting = self._awaiting, {}
        # taken back now, they fail as tasks pinned to an engine that is not there
        for items in waiting.values():
            self.tasks.readmit(items, self._outcomes, self._ran)
        self._done()

    def _stop_awaiting(self, keep: Any = ()) -> None:
        stop = getattr(self.registry, "stop_awaiting", None)
        if stop is not None:
            stop(keep)

    def _done(self) -> None:
        self._ran = {}
        self._stop_awaiting()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        try:
            self.registry.remove_observer(self)
        except ValueError:
            pass


def _pinned_to(data: bytes, later: bool) -> int | None:
    """The engine a task is pinned to, or None (a task that cannot be read is
    taken back at once, to fail as it would have)."""
    try:
        spec = decode_task(data, allow_depend=not later)
    except Exception:
        return None
    return spec.targets[0] if spec.pinned and spec.targets else None
