"""The result store: results of non-blocking calls, kept until taken.

A client that calls with ``block=False`` gets an int id at once; the result
stays here until the client takes it with :meth:`ResultStore.get`, or drops
it with :meth:`ResultStore.flush`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from plait.wire.errors import ResultAlreadyRetrieved, ResultNotCompleted


class ResultStore:
    """Pending and finished results by id."""

    def __init__(self, on_drop: Any = None) -> None:
        """``on_drop(value)`` is called for each result dropped unread by :meth:`flush`."""
        self._on_drop = on_drop
        self._next = 0
        self._results: dict[int, list] = {}  # id -> [done, value or Failure, waiters]

    def add(self, d: defer.Deferred) -> int:
        """Keep the eventual result of ``d``; returns its id."""
        result_id = self._next
        self._next += 1
        slot: list = [False, None, []]
        self._results[result_id] = slot

        def fired(value: Any) -> None:
            slot[0], slot[1] = True, value
            waiters, slot[2] = slot[2], []
            for w in waiters:
                self._deliver(result_id, w)

        d.addBoth(fired)
        return result_id

    def _deliver(self, result_id: int, waiter: defer.Deferred) -> None:
        slot = self._results.pop(result_id, None)
        if slot is None:
            waiter.errback(Failure(ResultAlreadyRetrieved(f"result {result_id} was already taken")))
        elif isinstance(slot[1], Failure):
            waiter.errback(slot[1])
        else:
            waiter.callback(slot[1])

    def get(self, result_id: int, block: bool) -> defer.Deferred:
        """A Deferred firing with the result and removing it from the store.

        Fails with ResultNotCompleted when not ``block`` and not ready, and
        with ResultAlreadyRetrieved for an unknown id.
        """
        slot = self._results.get(result_id)
        if slot is None:
            return defer.fail(
                ResultAlreadyRetrieved(
                    f"no pending result {result_id}: already taken, flushed or never issued"
                )
            )
        d: defer.Deferred = defer.Deferred()
        if slot[0]:
            self._deliver(result_id, d)
        elif block:
            slot[2].append(d)
        else:
            return defer.fail(ResultNotCompleted(f"result {result_id} is not ready"))
        return d

    def flush(self) -> int:
        """Forget every result nobody is waiting for; returns how many."""
        drop = [rid for rid, slot in self._results.items() if not slot[2]]
        for rid in drop:
            slot = self._results.pop(rid)
            if slot[0] and isinstance(slot[1], Failure):
                slot[1].trap(Exception)
            elif slot[0] and self._on_drop is not None:
                self._on_drop(slot[1])
        return len(drop)

    def __len__(self) -> int:
        return len(self._results)
