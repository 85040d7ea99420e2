"""Graph dependencies: a task that waits for others (``after``) or goes where
they ran (``follow``).

A :class:`~plait.wire.task.GraphDependency` names other tasks and how they
must have finished: *met* tasks finished in a way that counts (succeeded,
with ``success``; failed or aborted, with ``failure``), *against* ones in a
way that does not.  With ``all`` the dependency is met once every task is
met, and impossible as soon as one is against; otherwise met once one is
met, and impossible once every one is against.  ``follow`` also says where
the task may run: on the engine of its met tasks (with ``all``, the one
engine they all ran on: impossible if they ran on several), or, without
``all``, on any engine one of them ran on.  Tasks that are not known
(never submitted, or purged) make the dependency invalid.

:class:`Graph` keeps, for each unfinished task, the tasks blocked on it, and
counts each blocked task's dependencies as their tasks finish: the cost of
a finished task is the number of tasks blocked on it, so a DAG of ``n``
tasks with ``k`` dependencies each costs ``O(n k)`` in all, however it is
shaped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from plait.wire.task import GraphDependency

MET = "met"
WAITING = "waiting"
IMPOSSIBLE = "impossible"
INVALID = "invalid"

#: What a task's status lookup answers: None (unknown id), RUNNING (not
#: finished yet), or ``(succeeded, engine id)`` once it has finished.
RUNNING = "running"
Status = Any


class Need:
    """One graph dependency of one task, counted as its tasks finish."""

    __slots__ = ("dependency", "ids", "met", "against", "left", "engines")

    def __init__(self, dependency: GraphDependency):
        self.dependency = dependency
        self.ids = frozenset(dependency.ids)
        self.met = 0
        self.against = 0
        self.left = 0
        self.engines: set[int] = set()

    def finished(self, succeeded: bool, engine_id: int | None) -> None:
        """One of its tasks finished."""
        dependency = self.dependency
        if (dependency.success and succeeded) or (dependency.failure and not succeeded):
            self.met += 1
            if engine_id is not None:
                self.engines.add(engine_id)
        else:
            self.against += 1

    def state(self) -> str:
        if self.dependency.all:
            if self.against:
                return IMPOSSIBLE
            return WAITING if self.left else MET
        if self.met:
            return MET
        return WAITING if self.left else IMPOSSIBLE


class Blocked:
    """A task's graph dependencies, while it waits for them."""

    __slots__ = ("task", "after", "follow", "done")

    def __init__(self, task: Any, after: Need | None, follow: Need | None):
        self.task = task
        self.after = after
        self.follow = follow
        self.done = False

    def needs(self) -> Iterator[tuple[str, Need]]:
        if self.after is not None:
            yield "after", self.after
        if self.follow is not None:
            yield "follow", self.follow

    def verdict(self) -> tuple[str, Any]:
        """``(MET, engines or None)``, ``(WAITING, None)`` or ``(IMPOSSIBLE, why)``."""
        after, follow = self.after, self.follow
        if follow is None and after is not None:  # the common case, straight
            state = after.state()
            if state == IMPOSSIBLE:
                return IMPOSSIBLE, _why("after", after)
            return state, None
        waiting = False
        for name, need in self.needs():
            state = need.state()
            if state == IMPOSSIBLE:
                return IMPOSSIBLE, _why(name, need)
            waiting = waiting or state == WAITING
        if waiting:
            return WAITING, None
        follow = self.follow
        if follow is None:
            return MET, None
        if follow.dependency.all and len(follow.engines) > 1:
            return IMPOSSIBLE, (f"its follow dependencies ran on several engines "
                                f"({sorted(follow.engines)}): it cannot follow all of them")
        return MET, frozenset(follow.engines)


def _why(name: str, need: Need) -> str:
    dependency = need.dependency
    wanted = " or ".join(w for w, on in (("succeeded", dependency.success),
                                          ("failed", dependency.failure)) if on)
    if dependency.all:
        return f"a task of its {name} dependency did not finish as required ({wanted})"
    return f"no task of its {name} dependency finished as required ({wanted})"


class Graph:
    """Tasks blocked on others, by the tasks they wait for.

    ``status(taskid)`` tells how a task stands (see :data:`RUNNING`).
    """

    def __init__(self, status: Callable[[int], Status], name: Callable[[int], Any] = int):
        self._status = status
        self._name = name  # how messages name a task
        self._blocked_on: dict[int, list[Blocked]] = {}

    def __len__(self) -> int:
        return len(self._blocked_on)

    def add(self, task: Any, after: GraphDependency | None, follow: GraphDependency | None
            ) -> tuple[str, Any]:
        """Consider ``task``'s dependencies: a verdict (see :meth:`Blocked.verdict`),
        or ``(INVALID, why)`` when they name unknown tasks (nothing is kept then).

        While the verdict is WAITING, the task is kept, and :meth:`finished`
        reports it once decided; ``task.blocked`` holds its :class:`Blocked`.
        """
        blocked = Blocked(task, None if after is None else Need(after),
                          None if follow is None else Need(follow))
        pending: list[int] = []
        unknown: list[int] = []
        for _, need in blocked.needs():
            for taskid in need.ids:
                status = self._status(taskid)
                if status is None:
                    unknown.append(taskid)
                elif status == RUNNING:
                    need.left += 1
                    pending.append(taskid)
                else:
                    need.finished(*status)
        if unknown:
            return INVALID, (f"it depends on tasks that do not exist (never submitted, or "
                             f"purged): {[self._name(t) for t in sorted(set(unknown))]}")
        verdict = blocked.verdict()
        if verdict[0] == WAITING:
            for taskid in dict.fromkeys(pending):  # once, though after and follow name it
                self._blocked_on.setdefault(taskid, []).append(blocked)
            task.blocked = blocked
        return verdict

    def finished(self, taskid: int, succeeded: bool, engine_id: int | None
                 ) -> list[tuple[Any, str, Any]]:
        """``taskid`` finished: the blocked tasks now decided, ``(task, state, detail)``."""
        decided = []
        for blocked in self._blocked_on.pop(taskid, ()):
            if blocked.done:
                continue
            for need in (blocked.after, blocked.follow):
                if need is not None and taskid in need.ids:
                    need.left -= 1
                    need.finished(succeeded, engine_id)
            state, detail = blocked.verdict()
            if state != WAITING:
                blocked.done = True
                blocked.task.blocked = None
                decided.append((blocked.task, state, detail))
        return decided

    def forget(self, task: Any) -> None:
        """``task`` no longer waits (it was aborted or timed out): it is skipped
        lazily when its dependencies finish."""
        blocked = getattr(task, "blocked", None)
        if blocked is not None:
            blocked.done = True
            task.blocked = None
