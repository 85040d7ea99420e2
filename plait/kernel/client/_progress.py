"""Progress bars for the waits that take long, in both API generations.

A blocking wait (``ar.get``, ``ar.wait``, ``rc.wait``, a blocking ``map``;
``tc.barrier``, ``tc.map``, ``mec.barrier`` in the kernel generation)
given ``progress=True`` shows how many of its tasks are done as it waits; by
default (``progress=None``) it does so only in IPython, once the wait has
lasted :data:`PROGRESS_AFTER` seconds; ``progress=False`` never does.  The
bar is tqdm's: its notebook widget in Jupyter, its text bar in a terminal.
Elsewhere (a log, a pipe), or without tqdm, a plain line every
:data:`LOG_EVERY` seconds on standard error.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

#: Seconds a wait lasts before its bar shows, by default in IPython.
PROGRESS_AFTER = 3.0
#: Seconds between the plain lines written where no bar can be drawn.
LOG_EVERY = 5.0
#: Seconds between two looks at the count while a bar shows.
TICK = 0.1


def _shell() -> str | None:
    """The IPython shell's class name, or None outside IPython."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if get is not None else None
    return None if shell is None else type(shell).__name__


def _terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class _Lines:
    """A plain line on standard error every LOG_EVERY seconds."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc = total, desc
        self.start = time.monotonic()
        self.last = 0.0
        self.said: tuple[int, int] | None = None  # (done, total) of the last line

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if (final and self.said != (done, self.total)) or now - self.last >= LOG_EVERY:
            self.last, self.said = now, (done, self.total)
            print(f"plait: {self.desc}: {done}/{self.total} tasks done after "
                  f"{now - self.start:.1f} s", file=sys.stderr, flush=True)

    def resize(self, total: int) -> None:
        self.total = total

    def close(self, done: int) -> None:
        self.update(done, final=True)


class _Tqdm:
    def __init__(self, bar: Any):
        self.bar = bar

    def resize(self, total: int) -> None:
        if total != self.bar.total:
            n = self.bar.n
            self.bar.reset(total=total)  # (a notebook bar's widget takes it so)
            self.bar.update(n)

    def update(self, done: int) -> None:
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self, done: int) -> None:
        self.update(done)
        self.bar.close()


def bar_here() -> bool:
    """Whether a bar (not plain lines) can be drawn here: Jupyter, or a terminal."""
    return _shell() == "ZMQInteractiveShell" or _terminal()


def make_bar(total: int, desc: str) -> Any:
    """The bar this process can show (see the module documentation)."""
    try:
        if _shell() == "ZMQInteractiveShell":
            from tqdm.notebook import tqdm as notebook_bar

            return _Tqdm(notebook_bar(total=total, desc=desc, unit="task"))
        if _terminal():
            from tqdm import tqdm as text_bar

            return _Tqdm(text_bar(total=total, desc=desc, unit="task", file=sys.stderr))
    except Exception:  # (no tqdm, or no widgets for its notebook bar)
        pass
    return _Lines(total, desc)


#: Groups a counted call waits on at most (each one call to the controller).
TALLY_STEPS = 100


def tally_groups(ids: list[int]) -> list[list[int]]:
    """``ids`` cut into at most :data:`TALLY_STEPS` runs, in order."""
    step = max(1, -(-len(ids) // TALLY_STEPS))
    return [ids[i:i + step] for i in range(0, len(ids), step)]


class Tally:
    """What an asynchronous call counts for the blocking call's bar: ``done``
    of ``total`` (each set in the reactor thread, read from the caller's).
    ``asked``: the bar was asked for (``progress=True``), not only shown by
    default; a call may then spend more calls to count finer."""

    def __init__(self, total: int = 0, asked: bool = False):
        self.total = total
        self.done = 0
        self.asked = asked

    def add(self, n: int = 1) -> None:
        self.done += n

    def passing(self, value: Any, n: int | None = None) -> Any:
        """A Deferred's callback: ``n`` more done (``len(value)`` when None: a
        list of results), ``value`` passed on."""
        self.done += len(value) if n is None else n
        return value


def shows(progress: bool | None) -> bool:
    """Whether a wait given ``progress`` may show a bar (or lines) here."""
    return bool(progress) or (progress is None and _shell() is not None)


def wait(done: Callable[[], int], total: int | Callable[[], int],
         ready: Callable[[float | None], bool], timeout: float | None,
         progress: bool | None, desc: str) -> bool:
    """Wait with ``ready(seconds)`` (True once all is done) up to ``timeout``
    seconds (None: for ever), showing ``done()`` of ``total`` (or of
    ``total()``, when it is known only once the call has started) as
    ``progress`` says; whether all is done."""
    if not shows(progress):
        return ready(timeout)
    if not isinstance(total, int):
        return _wait(done, total, ready, timeout, bool(progress), desc)
    count = total
    return _wait(done, lambda: count, ready, timeout, bool(progress), desc)


def _wait(done: Callable[[], int], total: Callable[[], int],
          ready: Callable[[float | None], bool], timeout: float | None, progress: bool,
          desc: str) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    first = 0.0 if progress else PROGRESS_AFTER
    if ready(first if deadline is None else min(first, max(0.0, deadline - time.monotonic()))):
        if progress:  # asked for: a finished bar, then
            make_bar(total(), desc).close(done())
        return True
    if deadline is not None and time.monotonic() >= deadline:
        return False  # (a wait shorter than PROGRESS_AFTER: no bar)
    bar = None  # (made once the call knows its total: a notebook bar keeps its first)
    try:
        while deadline is None or time.monotonic() < deadline:
            step = TICK if deadline is None else min(TICK, max(0.0, deadline - time.monotonic()))
            finished = ready(step)
            if bar is None and (total() or finished):
                bar = make_bar(total(), desc)
            if bar is not None:
                bar.resize(total())
                bar.update(done())
            if finished:
                return True
        return ready(0)
    finally:
        if bar is None:
            bar = make_bar(total(), desc)
        bar.resize(total())
        bar.close(done())
