"""The callback thread: where AsyncResults' done callbacks run.

Results arrive in the client's reactor thread, which must never block; a
done callback may (and may submit more work, which waits on the reactor
thread).  So callbacks are queued to one daemon thread of their own, started
on first use, and run there in order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_callbacks: queue.SimpleQueue = queue.SimpleQueue()
_callback_thread: list[threading.Thread] = []
_callback_lock = threading.Lock()


def call_back(fn: Callable[[Any], Any], future: Any) -> None:
    """Run ``fn(future)`` soon in the callback thread (started on first use);
    an exception it raises is logged, as concurrent.futures logs one."""
    with _callback_lock:
        if not _callback_thread or not _callback_thread[0].is_alive():
            thread = threading.Thread(target=_run_callbacks, name="plait-callbacks",
                                      daemon=True)
            _callback_thread[:] = [thread]
            thread.start()
    _callbacks.put((fn, future))


def _run_callbacks() -> None:
    import logging

    while True:
        fn, future = _callbacks.get()
        try:
            fn(future)
        except Exception:
            logging.getLogger("plait.parallel").exception(
                "exception calling callback for %r", future)
