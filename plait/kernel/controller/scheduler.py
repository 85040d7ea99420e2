"""Scheduling for the Task service: which waiting task runs next, and where.

Two pieces, used together by :class:`~plait.kernel.controller.task.TaskController`:

* :class:`WaitingTasks` holds the scheduled tasks in order of arrival and
  knows, from each task's depend and the engines it should avoid, which
  engines may take it;
* a :class:`Scheduler` (any :class:`~plait.interfaces.task.IScheduler`)
  counts the tasks outstanding on each engine (its *load*), keeps engines at
  the high water mark ``hwm`` out of :meth:`~Scheduler.available`, and lets a
  *scheme* pick one engine among those a task may go to.

A scheduling pass repeatedly takes the earliest waiting task that some
available engine may take, and hands it to the engine the scheme picks.

Schemes
-------
By name (:data:`SCHEMES`):

``fifo``
    Tasks go, in submission order, to the engine that has been idle the
    longest: idle engines (load 0) first, then the one whose last assignment
    or completion is oldest.  This is the old kernel's FIFO scheduler.
``lru``
    The least recently assigned engine: round robin in effect, fair in the
    number of tasks, blind to their run time.
``plainrandom``
    An engine at random.
``twobin``
    Two engines at random; the least recently assigned of the two.
``leastload``
    The engine with the fewest outstanding tasks; the least recently
    assigned breaks ties.
``weighted``
    Two engines drawn at random with weights ``1 / (1 + load)``; the less
    loaded of the two (the least recently assigned on a tie).

``'module:function'`` names a scheme of one's own: a function of
``(slots, rng)`` returning one of the :class:`EngineSlot` s it is given;
``'module:Class'`` names a whole :class:`~plait.interfaces.task.IScheduler`
(see :func:`make_scheduler`).

The high water mark
-------------------
``hwm`` is the most tasks outstanding on one engine at once: the running
one plus those already sent to wait behind it.  With ``hwm = N`` (``0``:
no limit) the mark is fixed.  Tasks assigned to an engine in one scheduling
pass travel together, in one message (see :mod:`plait.kernel.controller.task`), so a
mark above 1 also lets several tasks share a message.

Defaults
--------
``leastload`` with an *adaptive* mark (``hwm = None``), because no fixed
mark serves both kinds of work:

* for long or uneven tasks the mark should be 1 or 2: a task committed to a
  busy engine cannot move to one that frees up first, and the round trip
  lost between two tasks is negligible next to their run time;
* for tiny tasks it should be large: a message costs more than the task,
  and engines would idle a round trip after each task.

So each engine's mark follows an estimate of its tasks' run time (a moving
average of the times the engine reports): enough tasks to hold about
:data:`TARGET_SECONDS` of work, between 1 and :data:`MAX_MARK`.  Tasks of
5 ms or more get a mark of 1 (the most informed balancing); tasks of 1 ms
get 5; no-op tasks get :data:`MAX_MARK`.  With no estimate yet (a new
engine, or one idle for :data:`IDLE_RESET` seconds, so that a new kind of
work starts cautiously) the mark is :data:`START_MARK`; it grows by one per
finished task (like TCP's slow start) and drops at once when tasks get
longer.  Least-load then sends work where it drains fastest.

The one case it cannot foresee is a stream of tiny tasks followed, without
a pause, by long ones: the first long tasks may be committed in a large
batch.  Workloads like that should fix the mark (``--hwm=1``).

Cost
----
Waiting tasks are kept in *groups* with equal constraints (the same depend,
compared as serialized bytes, and the same engines to avoid); a group's
depend is evaluated once per engine, again when that engine registers or
its properties change; a depend that raises anything counts as False.
Groups sit in a heap ordered by their earliest task.
A group none of whose engines is available is *parked* on those engines and
comes back only when one of them frees a slot or its eligibility changes, so
a pass never rescans tasks that cannot run.  Taking the next task costs
O(log groups) plus the engines of the group; :meth:`Scheduler.choose` is
linear in the candidate engines; the rest is O(1).  The common case, a task
free of constraints under ``leastload`` (the default), costs O(log engines):
its candidates are the available engines themselves (no set is built), and
the least loaded of them is the top of a heap of ``(load, last assigned)``
that the scheduler keeps as loads change (see :meth:`Scheduler.choose`).
"""

from __future__ import annotations

import importlib
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from heapq import heapify, heappop, heappush
from itertools import count
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer
from zope.interface.verify import verifyObject

from plait.interfaces.task import IScheduler

DEFAULT_SCHEME = "leastload"
#: None: the adaptive mark described above.
DEFAULT_HWM: int | None = None
#: The adaptive mark keeps about this much work (in seconds) on each engine ...
TARGET_SECONDS = 0.005
#: ... with at most this many tasks ...
MAX_MARK = 32
#: ... and starts at this mark while the run time of its tasks is unknown.
START_MARK = 2
#: An engine idle this long (seconds) forgets its estimate.
IDLE_RESET = 1.0
#: Weight of the newest run time in the moving average.
SMOOTHING = 0.25
#: With this many engines or more, leastload keeps its heap of loads (with
#: fewer, a scan of the candidates costs less than keeping it).
HEAP_FROM = 32

log = Logger()


class EngineSlot:
    """One engine's bookkeeping: outstanding tasks, recency, and its mark.

    ``last_assigned`` and ``last_event`` are stamps from one counter, so they
    order events; registration sets both.  ``mark`` is the engine's current
    high water mark (0: none); ``estimate`` the moving average of its tasks'
    run time in seconds (None: unknown); ``idle_since`` when its load last
    fell to 0.
    """

    __slots__ = ("engine_id", "load", "last_assigned", "last_event", "mark", "estimate",
                 "idle_since")

    def __init__(self, engine_id: int, stamp: int, mark: int, now: float):
        self.engine_id = engine_id
        self.load = 0
        self.last_assigned = stamp
        self.last_event = stamp
        self.mark = mark
        self.estimate: float | None = None
        self.idle_since = now

    def __repr__(self) -> str:
        return f"EngineSlot({self.engine_id}, load={self.load}, mark={self.mark})"


def adaptive_mark(estimate: float) -> int:
    """The mark holding about :data:`TARGET_SECONDS` of tasks of ``estimate`` seconds."""
    if estimate <= TARGET_SECONDS / MAX_MARK:
        return MAX_MARK
    return max(1, min(MAX_MARK, math.ceil(TARGET_SECONDS / estimate)))


Scheme = Callable[[Sequence[EngineSlot], random.Random], EngineSlot]


def _lru_key(slot: EngineSlot) -> int:
    return slot.last_assigned


def fifo(slots: Sequence[EngineSlot], rng: random.Random) -> EngineSlot:
    """The idle engine that has waited longest (busy ones after idle ones)."""
    return min(slots, key=lambda s: (s.load > 0, s.last_event))


def lru(slots: Sequence[EngineSlot], rng: random.Random) -> EngineSlot:
    """The least recently assigned engine."""
    return min(slots, key=_lru_key)


def plainrandom(slots: Sequence[EngineSlot], rng: random.Random) -> EngineSlot:
    """Any engine, uniformly at random."""
    return rng.choice(slots)


def twobin(slots: Sequence[EngineSlot], rng: random.Random) -> EngineSlot:
    """The least recently assigned of two engines drawn at random."""
    if len(slots) == 1:
        return slots[0]
    return min(rng.sample(slots, 2), key=_lru_key)


def leastload(slots: Sequence[EngineSlot], rng: random.Random) -> EngineSlot:
    """The least loaded engine, the least recently assigned among equals."""
    return min(slots, key=lambda s: (s.load, s.last_assigned))


def weighted(slots: Sequence[EngineSlot], rng: random.Random) -> EngineSlot:
    """The less loaded of two engines drawn with weights ``1 / (1 + load)``."""
    if len(slots) == 1:
        return slots[0]
    pair = rng.choices(slots, weights=[1.0 / (1 + s.load) for s in slots], k=2)
    return min(pair, key=lambda s: (s.load, s.last_assigned))


SCHEMES: dict[str, Scheme] = {
    "fifo": fifo,
    "lru": lru,
    "plainrandom": plainrandom,
    "twobin": twobin,
    "leastload": leastload,
    "weighted": weighted,
}


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"cannot load the scheduler scheme {path!r}: {exc}") from None


def get_scheme(name: str) -> Scheme:
    """The scheme called ``name``: a built-in one, or ``'module:function'``.

    A function taking ``(slots, rng)`` (a non-empty sequence of
    :class:`EngineSlot` and a ``random.Random``) and returning one of the
    slots is a scheme.  ValueError, listing the valid names, otherwise.
    """
    if isinstance(name, str) and ":" in name:
        scheme = _import(name)
        if not callable(scheme) or isinstance(scheme, type):
            raise ValueError(f"{name!r} is not a scheme function (slots, rng) -> slot")
        return scheme
    try:
        return SCHEMES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown scheduler scheme {name!r}; valid schemes: {', '.join(sorted(SCHEMES))}, "
            f"or 'module:function'"
        ) from None


def make_scheduler(scheme: str = DEFAULT_SCHEME, hwm: int | None = DEFAULT_HWM,
                   rng: random.Random | None = None,
                   clock: Callable[[], float] = time.monotonic) -> Any:
    """The :class:`~plait.interfaces.task.IScheduler` that ``ipcontroller --scheme`` names.

    ``scheme`` is a built-in name, ``'module:function'`` (a scheme function,
    used by a :class:`Scheduler`), or ``'module:Class'`` where the class
    implements IScheduler: it is called with ``hwm=hwm`` and must provide
    the interface.
    """
    if isinstance(scheme, str) and ":" in scheme:
        obj = _import(scheme)
        if isinstance(obj, type) and IScheduler.implementedBy(obj):
            cls: Callable[..., Any] = obj  # the class, called with hwm= (not an adaptation)
            scheduler = cls(hwm=hwm)
            verifyObject(IScheduler, scheduler)
            return scheduler
    return Scheduler(scheme, hwm, rng, clock=clock)


@implementer(IScheduler)
class Scheduler:
    """Engine loads, the high water mark, and a scheme to choose with.

    ``scheme`` is a name from :data:`SCHEMES`; ``hwm`` the most tasks
    outstanding on one engine (0: unlimited; None: adaptive, see the module
    documentation); ``rng`` the random source of the random schemes (seed it
    for reproducible choices); ``clock`` a function returning seconds (for
    the idle reset of adaptive marks).
    """

    def __init__(
        self,
        scheme: str = DEFAULT_SCHEME,
        hwm: int | None = DEFAULT_HWM,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if hwm is not None and (isinstance(hwm, bool) or not isinstance(hwm, int) or hwm < 0):
            raise ValueError(
                f"hwm must be an int >= 0 (0: no limit) or None (adaptive), not {hwm!r}"
            )
        self._scheme = get_scheme(scheme)
        self.name = scheme
        self.hwm = hwm
        self._rng = rng or random.Random()
        self._clock = clock
        self._slots: dict[int, EngineSlot] = {}
        self._available: set[int] = set()
        self._stamps = count(1)
        self._estimates = [0.0, 0]  # the sum of the engines' estimates, and how many
        # (leastload) (load, last assigned, engine id) of every engine, and stale
        # entries: an entry counts while the engine's slot still has those values
        self._by_load: list[tuple[int, int, int]] | None = [] if \
            self._scheme is leastload else None

    def __repr__(self) -> str:
        return f"Scheduler({self.name!r}, hwm={self.hwm})"

    # -- engines ------------------------------------------------------------
    def add_engine(self, engine_id: int) -> None:
        if engine_id not in self._slots:
            mark = START_MARK if self.hwm is None else self.hwm
            slot = EngineSlot(engine_id, next(self._stamps), mark, self._clock())
            if self.hwm is None:
                self._estimated(slot, self._cluster_estimate())
                if slot.estimate is not None:
                    slot.mark = min(START_MARK, adaptive_mark(slot.estimate))
            self._slots[engine_id] = slot
            self._available.add(engine_id)
            if self._by_load is not None and len(self._slots) == HEAP_FROM:
                self._by_load[:] = []  # (from now on it is kept: every engine in it)
                for each in self._slots.values():
                    self._index(each)
            else:
                self._index(slot)

    def remove_engine(self, engine_id: int) -> None:
        slot = self._slots.pop(engine_id, None)
        self._available.discard(engine_id)
        if slot is not None:
            self._estimated(slot, None)

    def _estimated(self, slot: EngineSlot, estimate: float | None) -> None:
        """Set ``slot.estimate``, keeping the sum and count of the known ones."""
        if slot.estimate is not None:
            self._estimates[0] -= slot.estimate
            self._estimates[1] -= 1
        slot.estimate = estimate
        if estimate is not None:
            self._estimates[0] += estimate
            self._estimates[1] += 1

    def _cluster_estimate(self) -> float | None:
        """The mean estimate of the engines that have one (O(1))."""
        total, known = self._estimates
        return max(0.0, total / known) if known else None

    # -- loads --------------------------------------------------------------
    def available(self) -> set[int]:
        return self._available

    def load(self, engine_id: int) -> int:
        slot = self._slots.get(engine_id)
        return 0 if slot is None else slot.load

    def mark(self, engine_id: int) -> int:
        """The engine's current high water mark (0: no limit; 0 if unknown)."""
        slot = self._slots.get(engine_id)
        return 0 if slot is None else slot.mark

    def _update(self, slot: EngineSlot) -> None:
        if slot.mark and slot.load >= slot.mark:
            self._available.discard(slot.engine_id)
        else:
            self._available.add(slot.engine_id)
        self._index(slot)

    def _index(self, slot: EngineSlot) -> None:
        """(leastload, :data:`HEAP_FROM` engines or more) Enter the slot's load and
        recency in the heap."""
        heap = self._by_load
        if heap is None or len(self._slots) < HEAP_FROM:
            return
        heappush(heap, (slot.load, slot.last_assigned, slot.engine_id))
        if len(heap) > 4 * len(self._slots) + 64:  # mostly stale: build it again
            heap[:] = [(s.load, s.last_assigned, s.engine_id) for s in self._slots.values()]
            heapify(heap)

    def assigned(self, engine_id: int) -> None:
        slot = self._slots[engine_id]
        if (self.hwm is None and slot.load == 0 and slot.estimate is not None
                and self._clock() - slot.idle_since >= IDLE_RESET):
            self._estimated(slot, None)  # a pause: the next tasks may be of another kind
            slot.mark = START_MARK
        slot.load += 1
        slot.last_assigned = slot.last_event = next(self._stamps)
        self._update(slot)

    def finished(self, engine_id: int, seconds: float | None = None) -> None:
        slot = self._slots.get(engine_id)
        if slot is None:
            return
        slot.load = max(0, slot.load - 1)
        slot.last_event = next(self._stamps)
        if self.hwm is None and seconds is not None and 0 <= seconds < math.inf:
            estimate = seconds if slot.estimate is None else (
                slot.estimate + SMOOTHING * (seconds - slot.estimate))
            self._estimated(slot, estimate)
            target = adaptive_mark(estimate)
            slot.mark = target if target <= slot.mark else slot.mark + 1
        if slot.load == 0:
            slot.idle_since = self._clock()
        self._update(slot)

    # -- choosing -----------------------------------------------------------
    def choose(self, candidates: Iterable[int]) -> int:
        heap = self._by_load
        if heap is not None and candidates is self._available and \
                len(self._slots) >= HEAP_FROM:
            # leastload among all available engines: the heap's first live entry,
            # when that engine is available (else the engines at their mark are the
            # least loaded, and the scan below decides)
            slots_by_id = self._slots
            while heap:
                load, stamp, engine_id = heap[0]
                slot = slots_by_id.get(engine_id)
                if slot is None or slot.load != load or slot.last_assigned != stamp:
                    heappop(heap)  # stale
                    continue
                if engine_id in candidates:
                    return engine_id
                break
        slots = [self._slots[e] for e in sorted(candidates)]
        if not slots:
            raise ValueError("no candidate engine to choose from")
        return self._scheme(slots, self._rng).engine_id


# -- the waiting tasks ----------------------------------------------------------------
class _Group:
    """Waiting tasks sharing their constraints: a depend, engines to avoid if
    possible (``avoid``: they failed there), engines they may run on only
    (``only``, None for any) and engines they must never run on (``never``:
    a functional dependency was unmet there).

    ``heap`` holds task keys, earliest first, plus keys removed since
    (skipped lazily); ``live`` counts the tasks really waiting.  ``listed``
    is the head key under which the group has its entry in the order heap,
    None while it is parked.
    """

    __slots__ = ("key", "depend", "avoid", "only", "never", "heap", "live", "eligible", "listed",
                 "free")

    def __init__(self, key: tuple, depend: Any, avoid: frozenset[int],
                 only: frozenset[int] | None = None, never: frozenset[int] = frozenset()):
        self.key = key
        self.depend = depend
        self.avoid = avoid
        self.only = only
        self.never = never
        self.heap: list[int] = []
        self.live = 0
        self.eligible: set[int] = set()
        self.listed: int | None = None
        #: no constraint at all: every engine is eligible, none to avoid
        self.free = depend is None and not avoid and only is None and not never

    def update(self, engine_id: int, properties: dict) -> bool:
        """Re-evaluate the depend on one engine; True if the engine is newly eligible.

        Never raises: a depend that raises anything at all (even SystemExit)
        counts as False.
        """
        accepted = engine_id not in self.never and (self.only is None or engine_id in self.only)
        if accepted and self.depend is not None:
            try:
                accepted = bool(self.depend(dict(properties)))
            except BaseException as exc:  # user code must not stop the controller
                accepted = False
                log.warn(
                    "the depend {depend!r} raised {error!r} on engine {engine}: "
                    "treated as False", depend=self.depend, error=exc, engine=engine_id,
                )
        if not accepted:
            self.eligible.discard(engine_id)
            return False
        if engine_id in self.eligible:
            return False
        self.eligible.add(engine_id)
        return True

    def pool(self) -> set[int]:
        """The engines this group's tasks should go to: eligible ones, avoiding
        engines they failed on unless no other is left."""
        if self.avoid:
            return (self.eligible - self.avoid) or self.eligible
        return self.eligible


class WaitingTasks:
    """The scheduled tasks, by constraints and in order of arrival.

    Each task is known by a *key*, an int given by the owner that orders the
    tasks: the task controller stamps each task with a counter when it
    arrives, so the earliest arrival runs first (a retried task keeps its
    key, hence its place).

    ``properties(engine_id)`` returns an engine's properties dict, or None
    when the engine is gone.  The owner reports engines (:meth:`engine_added`,
    :meth:`engine_removed`, :meth:`refresh`) and freed slots
    (:meth:`slot_freed`), and takes tasks with :meth:`pop_runnable`.
    """

    def __init__(self, properties: Callable[[int], dict | None]):
        self._properties = properties
        self._engines: set[int] = set()
        self._groups: dict[tuple, _Group] = {}
        self._where: dict[int, _Group] = {}  # task key -> its group
        self._order: list[tuple[int, int, _Group]] = []  # (head key, seq, group)
        self._seq = count()
        self._parked_on: dict[int, set[_Group]] = {}  # engine id -> groups waiting for it

    def __len__(self) -> int:
        return len(self._where)

    def compact(self) -> None:
        """Rebuild the index of tasks at its present size (see TaskController)."""
        self._where = dict(self._where)

    def __contains__(self, key: int) -> bool:
        return key in self._where

    # -- tasks ------------------------------------------------------------------------
    def add(self, key: int, depend_key: bytes | None, depend: Any,
            avoid: Iterable[int] = (), only: Iterable[int] | None = None,
            never: Iterable[int] = ()) -> None:
        """A task waits (keys must grow with arrival; a retried task keeps its own).

        A new group's depend is evaluated on every engine before anything is
        recorded, so nothing is left half-added if that fails.
        """
        avoid = frozenset(avoid)
        only_set = None if only is None else frozenset(only)
        never_set = frozenset(never)
        constraints = (depend_key, avoid, only_set, never_set)
        group = self._groups.get(constraints)
        if group is None:
            group = _Group(constraints, depend, avoid, only_set, never_set)
            for engine_id in self._engines:
                properties = self._properties(engine_id)
                if properties is not None:
                    group.update(engine_id, properties)
            self._groups[constraints] = group
        heappush(group.heap, key)
        group.live += 1
        self._where[key] = group
        if group.live == 1 or (group.listed is not None and key < group.listed):
            self._list(group)

    def hopeless(self) -> list[int]:
        """The keys of the tasks that no registered engine may ever take (all
        the engines they may run on are gone, or refused them): they stop
        waiting."""
        keys = []
        for group in list(self._groups.values()):
            if group.only is None and not group.never:
                continue
            possible = self._engines if group.only is None else self._engines & group.only
            if possible - group.never:
                continue
            for key in [k for k, g in self._where.items() if g is group]:
                self.remove(key)
                keys.append(key)
        return keys

    def remove(self, key: int) -> None:
        """A task stops waiting (KeyError if it was not)."""
        group = self._where.pop(key)
        group.live -= 1
        if group.live == 0:
            if group.free:  # (it stays, empty: made again, it would ask every engine again)
                group.listed = None  # (its entries in the order heap are stale now)
                group.heap.clear()
            else:
                del self._groups[group.key]

    def pop_runnable(self, ready: set[int]) -> tuple[int, set[int]] | None:
        """Take the earliest task some engine in ``ready`` may run.

        Returns ``(key, candidate engines)``, or None when no waiting
        task may run on a ready engine.
        """
        order = self._order
        while order and ready:
            head, _, group = heappop(order)
            if group.listed != head or self._groups.get(group.key) is not group \
                    or not group.live:
                continue  # stale entry
            group.listed = None
            actual = self._head(group)
            if actual != head:
                self._list(group)
                continue
            if group.free:  # any engine will do: the ready ones, as they are
                candidates = ready
            else:
                candidates = group.pool() & ready
            if not candidates:
                self._park(group)
                continue
            heappop(group.heap)
            self.remove(actual)
            if group.live:
                self._list(group)
            return actual, candidates
        return None

    def _head(self, group: _Group) -> int:
        heap, where = group.heap, self._where
        while where.get(heap[0]) is not group:
            heappop(heap)
        return heap[0]

    def _list(self, group: _Group) -> None:
        if not group.live:  # (the free group stays when empty: nothing to list)
            return
        head = self._head(group)
        if group.listed != head:
            group.listed = head
            heappush(self._order, (head, next(self._seq), group))

    def _park(self, group: _Group) -> None:
        """Set ``group`` aside until one of its engines frees a slot."""
        for engine_id in group.pool():
            self._parked_on.setdefault(engine_id, set()).add(group)

    def _relist_parked(self) -> None:
        for group in self._groups.values():
            if group.listed is None:
                self._list(group)

    # -- engines ------------------------------------------------------------------------
    def slot_freed(self, engine_id: int) -> None:
        """``engine_id`` may take a task again: wake the groups parked on it."""
        for group in self._parked_on.pop(engine_id, ()):
            if group.listed is None and self._groups.get(group.key) is group:
                self._list(group)

    def engine_added(self, engine_id: int) -> None:
        self._engines.add(engine_id)
        self.refresh(engine_id)

    def engine_removed(self, engine_id: int) -> None:
        """Forget an engine; parked groups are reconsidered (their pool may change)."""
        if engine_id not in self._engines:
            return
        self._engines.discard(engine_id)
        self._parked_on.pop(engine_id, None)
        for group in self._groups.values():
            group.eligible.discard(engine_id)
        self._relist_parked()

    def refresh(self, engine_id: int) -> None:
        """Re-evaluate every depend on ``engine_id``'s properties."""
        properties = self._properties(engine_id) if engine_id in self._engines else None
        if properties is None:
            return
        for group in self._groups.values():
            if group.update(engine_id, properties) and group.listed is None:
                self._list(group)

    def refresh_all(self) -> None:
        """Re-evaluate everything and reconsider every parked group."""
        for engine_id in list(self._engines):
            self.refresh(engine_id)
        self._relist_parked()
