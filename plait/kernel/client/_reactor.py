"""One Twisted reactor per process, running in a background thread.

Blocking clients (scripts, IPython, Jupyter) call into the asynchronous
client through :func:`call`, which runs a function in the reactor thread and
waits for its result.  Jupyter's asyncio loop keeps running in the main
thread; the reactor never touches it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _twisted_reactor
from twisted.python.failure import Failure

from plait.wire.errors import PlaitError

reactor: Any = _twisted_reactor  # provides every IReactor* interface; typed by Twisted as a bare protocol

#: Errors that describe the user's call, not a bug: raised without our frames.
_QUIET = (PlaitError, TypeError, ValueError, KeyError, IndexError, LookupError, OSError)

_lock = threading.Lock()
_thread: threading.Thread | None = None


def in_reactor_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def running_in_thread() -> bool:
    """True while this module's reactor thread runs (it was started for blocking calls)."""
    return _thread is not None and _thread.is_alive()


def ensure_running() -> None:
    """Start the reactor thread if it is not running yet."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        if reactor.running:
            raise RuntimeError(
                "the Twisted reactor already runs in this process: use the asynchronous "
                "clients (AsyncMultiEngineClient, AsyncTaskClient) from Twisted code"
            )
        started = threading.Event()
        reactor.callWhenRunning(started.set)
        _thread = threading.Thread(
            target=reactor.run, kwargs={"installSignalHandlers": False},
            name="plait-reactor", daemon=True,
        )
        _thread.start()
        started.wait()


class Call:
    """A call started in the reactor thread by :func:`start`: :meth:`wait` for
    it, then take its :meth:`result`."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._box: list[Any] = []

    def _store(self, result: Any) -> None:
        self._box.append(result)
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the call has finished, waiting up to ``timeout`` seconds for it."""
        return self._done.wait(timeout)

    def result(self) -> Any:
        """What the call returned (its Deferred's result), or raise what it raised."""
        result = self._box[0]
        if isinstance(result, Failure):
            exc = result.value
            if isinstance(exc, _QUIET):
                # the reactor thread's frames say nothing to the user: show the
                # error as raised by the call they made
                raise exc.with_traceback(None) from None
            result.raiseException()
        return result


def start(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Call:
    """Start ``fn(*args, **kwargs)`` in the reactor thread; the :class:`Call`."""
    if in_reactor_thread():
        raise RuntimeError(
            "a blocking plait call was made from the reactor thread; "
            "in Twisted code use the asynchronous API (Deferreds)"
        )
    ensure_running()
    pending = Call()

    def run() -> None:
        defer.maybeDeferred(fn, *args, **kwargs).addBoth(pending._store)

    reactor.callFromThread(run)
    return pending


def call(fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in the reactor thread and return its result.

    ``fn`` may return a Deferred; its result (or exception) is returned (or
    raised) here.  With ``timeout``, raise TimeoutError when it takes longer
    (the call itself goes on).
    """
    pending = start(fn, *args, **kwargs)
    if not pending.wait(timeout):
        raise TimeoutError(f"no answer within {timeout} s")
    return pending.result()
