"""The engines as a :class:`concurrent.futures.Executor`.

``lview.executor`` (and ``rc.executor(targets)``) is a :class:`ViewExecutor`:
``submit`` is ``apply_async`` on the view and returns its AsyncResult (a
Future); ``map`` runs the calls on the engines and yields their results in
order, as :meth:`concurrent.futures.Executor.map` does (an error is raised
when its result is reached; ``timeout`` counts from the call); ``shutdown``
waits for what it submitted, or aborts it with ``cancel_futures`` (every
task not finished: one running is interrupted, as ``ar.abort()`` does).  It is
a context manager, and calling it returns itself, so ``lview.executor()``
and ``lview.executor`` are the same object.

Done callbacks (``ar.add_done_callback``) run in the client's callback
thread (:mod:`._callbacks`), never in its reactor thread: a callback may
block and submit more work.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class ViewExecutor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` submitting to ``view`` (see the
    module documentation)."""

    def __init__(self, view: Any):
        self.view = view
        self._lock = threading.Lock()
        self._shut = False
        self._pending: dict[Any, None] = {}  # (in submission order)

    def __call__(self) -> ViewExecutor:
        return self

    def __repr__(self) -> str:
        return f"<ViewExecutor of {self.view!r}{' (shut down)' if self._shut else ''}>"

    def _check(self) -> None:
        if self._shut:
            raise RuntimeError("cannot schedule new tasks: this executor was shut down")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on an engine; its AsyncResult (a Future)."""
        with self._lock:
            self._check()
        ar = self.view.apply_async(fn, *args, **kwargs)
        with self._lock:
            self._pending[ar] = None
        ar.add_done_callback(self._forget)
        return ar

    def _forget(self, ar: Any) -> None:
        with self._lock:
            self._pending.pop(ar, None)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1) -> Iterator[Any]:
        """``fn`` over the items of ``iterables`` (as ``zip``), on the engines;
        an iterator of the results in order.  ``chunksize`` items travel
        together.  TimeoutError past ``timeout`` seconds from the call."""
        if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, not {chunksize!r}")
        with self._lock:
            self._check()
        columns = [list(items) for items in iterables]
        if not columns:
            raise TypeError("map() needs at least one iterable")
        n = min(len(column) for column in columns)
        ar = self.view.map_async(fn, *(column[:n] for column in columns), chunksize=chunksize)
        with self._lock:
            self._pending[ar] = None
        ar.add_done_callback(self._forget)
        return _in_order(ar, timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more tasks; abort those not finished (``cancel_futures``: a
        running one is interrupted); with ``wait``, return once every task
        submitted has finished."""
        with self._lock:
            self._shut = True
            pending = list(self._pending)
        if cancel_futures:  # the last first: none starts when one before it is interrupted
            for ar in reversed(pending):
                if not ar.done():
                    try:
                        ar.abort()
                    except Exception:
                        pass  # finished meanwhile
        if wait and pending:
            concurrent.futures.wait(pending)


def _in_order(ar: Any, timeout: float | None) -> Iterator[Any]:
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    yield from ar._elements(deadline)
