"""PendingResult: a result that a non-blocking call will produce.

One class serves both worlds.  In blocking code, :meth:`get_result`, ``.r``,
:meth:`get`, :meth:`wait`, :meth:`ready` and :meth:`successful` block or
poll through the reactor thread.  In Twisted code, :meth:`deferred` returns
a Deferred.  It follows the reference's ``PendingResult`` and grows toward
the ``AsyncResult`` interface (get/wait/ready/successful/metadata).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from plait.kernel.client import _reactor
from plait.wire.errors import ResultNotCompleted

_MISSING = object()


class PendingResult:
    """The pending result of a call made with ``block=False``.

    ``fetch(block)`` returns a Deferred firing with the finished result or
    failing with ResultNotCompleted (when not blocking and not ready).
    """

    def __init__(self, fetch: Callable[[bool], defer.Deferred], result_id: int | None = None,
                 description: str = ""):
        self._fetch = fetch
        self.result_id = result_id
        self.description = description
        self.submitted = time.time()
        self._outcome: Any = _MISSING  # the value, or a Failure
        self._callbacks: list[tuple[Callable, tuple, dict]] = []
        self._applied = 0  # how many callbacks have been applied to _outcome
        self._done = threading.Event()
        self._fetching: defer.Deferred | None = None
        self.metadata: dict[str, Any] = {"submitted": self.submitted}

    def __repr__(self) -> str:
        state = "done" if self._done.is_set() else "pending"
        return f"<PendingResult {self.description or self.result_id} ({state})>"

    # -- reactor-thread machinery ------------------------------------------------
    def _settle(self, outcome: Any) -> None:
        if self._outcome is _MISSING:
            self._outcome = outcome
            self.metadata["completed"] = time.time()
            self._done.set()

    def _start_fetch(self) -> defer.Deferred:
        if self._fetching is None:
            d = self._fetch(True)
            d.addBoth(self._settle)
            self._fetching = d
        return self._fetching

    def _poll(self) -> defer.Deferred | None:
        if self._done.is_set() or self._fetching is not None:
            return None
        d = self._fetch(False)

        def failed(f: Failure) -> None:
            if not f.check(ResultNotCompleted):
                self._settle(f)

        d.addCallbacks(self._settle, failed)
        return d

    def _value(self) -> Any:
        """The result with the callbacks applied, each exactly once."""
        outcome = self._outcome
        if isinstance(outcome, Failure):
            outcome.raiseException()
        while self._applied < len(self._callbacks):
            fn, args, kwargs = self._callbacks[self._applied]
            self._applied += 1
            self._outcome = outcome = fn(outcome, *args, **kwargs)
        return outcome

    def settled(self) -> defer.Deferred:
        """(Twisted code) A Deferred firing with None once the result is here,
        whatever it is; it never fails."""
        if self._done.is_set():
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._start_fetch().addBoth(lambda _: d.callback(None))
        return d

    def deferred(self) -> defer.Deferred:
        """(Twisted code) A Deferred firing with the result, callbacks applied."""
        return self.settled().addCallback(lambda _: self._value())

    # -- blocking API ---------------------------------------------------------------
    def get_result(self, default: Any = None, block: bool = True) -> Any:
        """The result; ``default`` if not ``block`` and not ready yet.

        A remote exception is raised here (and again on later calls).
        """
        if not self._done.is_set():
            if block:
                self.wait()
            else:
                _reactor.call(self._poll)
                if not self._done.is_set():
                    return default
        return self._value()

    @property
    def r(self) -> Any:
        """Shorthand for ``get_result(block=True)``."""
        return self.get_result(block=True)

    result = r

    def get(self, timeout: float | None = None) -> Any:
        """The result; TimeoutError if not ready within ``timeout`` seconds."""
        self.wait(timeout)
        if not self._done.is_set():
            raise TimeoutError(f"result not ready within {timeout} s")
        return self._value()

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or ``timeout`` passes; never raises."""
        if not self._done.is_set():
            _reactor.call(self._start_fetch_quietly)
            self._done.wait(timeout)

    def _start_fetch_quietly(self) -> None:
        self._start_fetch()

    def ready(self) -> bool:
        """Whether the result has arrived (asks the controller if needed)."""
        if not self._done.is_set():
            _reactor.call(self._poll)
        return self._done.is_set()

    def successful(self) -> bool:
        """Whether the call succeeded; AssertionError when not ready."""
        if not self.ready():
            raise AssertionError("the result is not ready")
        return not isinstance(self._outcome, Failure)

    def add_callback(self, f: Callable, *args: Any, **kwargs: Any) -> None:
        """Apply ``f(result, *args, **kwargs)`` to the result when it is taken."""
        self._callbacks.append((f, args, kwargs))

    @property
    def elapsed(self) -> float:
        end = self.metadata.get("completed", time.time())
        return end - self.submitted
