"""Task ids: issued once, in blocks reserved by one client connection each.

A TaskClient hands out task ids before the controller has answered (see
:mod:`plait.kernel.client._submit`), so it reserves them in blocks.  The
controller keeps, for every block, which client connection (its *owner*)
reserved it and which of its ids were used.  An id is accepted by
``submit`` only from the owner of its block, and only once; once every id of
a block is used the block is forgotten, and when an owner goes away
(:meth:`TaskIds.release`) its unused ids are dropped.  So ids are never
reused, even after ``clear``, and one client can neither take nor spoil the
ids of another.

Across restarts, ids never repeat for a profile either: an :class:`IdHorizon`
file holds an id beyond every id issued (it moves ahead a million ids at a
time, written atomically before any id past the old mark is given out), and
a controller starts at the larger of that mark and what its hub's store
holds.  A SIGKILL at any moment loses at most the unused ids below the mark.

Cost: a bit per reserved id (8 KiB for the largest block a client
reserves), a binary search over the live blocks (a few per connected
client) per submission.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from pathlib import Path
from typing import Any

from plait.interfaces.task import MAX_RESERVE


class _Block:
    """``n`` consecutive ids from ``first``, reserved by ``owner``."""

    __slots__ = ("first", "n", "owner", "used", "left")

    def __init__(self, first: int, n: int, owner: Any):
        self.first = first
        self.n = n
        self.owner = owner
        self.used = bytearray((n + 7) // 8)
        self.left = n


class IdHorizon:
    """The file ``path``: an id no task of the profile has reached yet."""

    #: How far ahead the mark moves each time (one write per this many ids).
    STEP = 1 << 20

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def load(self) -> int:
        """The mark (0 when there is none yet, or it cannot be read)."""
        try:
            return max(0, int(self.path.read_text().strip()))
        except (OSError, ValueError):
            return 0

    def advance(self, beyond: int) -> int:
        """Move the mark past ``beyond`` (durably, before returning); the new mark."""
        mark = beyond + self.STEP
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(f"{mark}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return mark


class TaskIds:
    """The ids issued so far and the blocks still open (see the module doc);
    with a ``horizon``, never an id an earlier run of the profile issued."""

    def __init__(self, first: int = 0, horizon: IdHorizon | None = None) -> None:
        self._horizon = horizon
        if horizon is not None:
            first = max(first, horizon.load())
            self._limit = horizon.advance(first)
        self._next = first
        self._starts: list[int] = []  # first ids of the open blocks, ascending
        self._blocks: dict[int, _Block] = {}

    @property
    def next_id(self) -> int:
        """The id the next issue or reservation starts at (all below are issued)."""
        return self._next

    def _past(self, n: int) -> None:
        """``n`` ids from the next one are about to be given: move the mark first."""
        if self._horizon is not None and self._next + n > self._limit:
            self._limit = self._horizon.advance(self._next + n)

    def issue(self) -> int:
        """One new id, for a task the controller submits itself (a recovery task)."""
        self._past(1)
        taskid = self._next
        self._next += 1
        return taskid

    def reserve(self, n: int, owner: Any) -> int:
        """Reserve ``n`` (1 to MAX_RESERVE) consecutive ids for ``owner``; the first.

        ValueError for a bad ``n``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_RESERVE:
            raise ValueError(f"can reserve 1 to {MAX_RESERVE} task ids at once, not {n!r}")
        self._past(n)
        first = self._next
        self._next += n
        self._starts.append(first)  # ids only grow: the list stays sorted
        self._blocks[first] = _Block(first, n, owner)
        return first

    def take(self, taskid: Any, owner: Any) -> str | None:
        """Use ``taskid`` for a submission of ``owner``.

        Returns None when the id was free in a block ``owner`` reserved (it is
        used from now on), else why it cannot be used.
        """
        if isinstance(taskid, bool) or not isinstance(taskid, int):
            return f"task id {taskid!r} is not an int"
        if not 0 <= taskid < self._next:
            return f"task id {taskid} was never reserved"
        index = bisect_right(self._starts, taskid) - 1
        block = self._blocks[self._starts[index]] if index >= 0 else None
        if block is None or taskid >= block.first + block.n:
            return (f"task id {taskid} is not reserved (any more): ids are used once, and a "
                    f"reservation ends when its client disconnects")
        if block.owner is not owner:
            return f"task id {taskid} is reserved by another client"
        byte, bit = divmod(taskid - block.first, 8)
        if block.used[byte] & (1 << bit):
            return f"task id {taskid} was already used"
        block.used[byte] |= 1 << bit
        block.left -= 1
        if not block.left:
            self._close(index)
        return None

    def release(self, owner: Any) -> int:
        """Drop the blocks of ``owner`` (it went away); returns how many ids were unused."""
        dropped = 0
        for index in range(len(self._starts) - 1, -1, -1):
            block = self._blocks[self._starts[index]]
            if block.owner is owner:
                dropped += block.left
                self._close(index)
        return dropped

    def open_blocks(self, owner: Any) -> int:
        """How many blocks of ``owner`` are still open."""
        return sum(1 for block in self._blocks.values() if block.owner is owner)

    def _close(self, index: int) -> None:
        del self._blocks[self._starts.pop(index)]
