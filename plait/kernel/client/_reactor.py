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


def call(fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in the reactor thread and return its result.

    ``fn`` may return a Deferred; its result (or exception) is returned (or
    raised) here.  With ``timeout``, raise TimeoutError when it takes longer
    (the call itself goes on).
    """
    if in_reactor_thread():
        raise RuntimeError(
            "a blocking plait call was made from the reactor thread; "
            "in Twisted code use the asynchronous API (Deferreds)"
        )
    ensure_running()
    done = threading.Event()
    box: list[Any] = []

    def run() -> None:
        d = defer.maybeDeferred(fn, *args, **kwargs)

        def store(result: Any) -> None:
            box.append(result)
            done.set()

        d.addBoth(store)

    reactor.callFromThread(run)
    if not done.wait(timeout):
        raise TimeoutError(f"no answer within {timeout} s")
    result = box[0]
    if isinstance(result, Failure):
        exc = result.value
        if isinstance(exc, _QUIET):
            # the reactor thread's frames say nothing to the user: show the
            # error as raised by the call they made
            raise exc.with_traceback(None) from None
        result.raiseException()
    return result
