"""SIGINT and run-time limits on an engine: interrupting the user code it runs.

An engine runs user code in its main thread, one command at a time.  The
controller interrupts it out of band (``send_signal``, through the reactor
thread, never behind queued commands): the main thread gets SIGINT, and
:data:`interrupts` turns it into a KeyboardInterrupt *only inside user code*
(:meth:`Interrupts.user_code` marks the executed source and the called
function).  A task's ``time_limit`` arms a SIGALRM timer for the time the
task runs (:meth:`Interrupts.time_limit`); past it, a TaskTimeout is raised
in the user code the same way.  Either exception fails that command or task
alone, as any exception of the user's does, and the engine goes on.

Anywhere else (between commands, or in plait's own code around them) the
signal does nothing, so that an interrupt arriving as a command ends can
never lose that command's reply or end the engine; except for an engine run
by hand in a terminal, which Ctrl-C still stops as before
(``stop_when_idle``).  User code that installs its own SIGALRM handler
cannot have a time limit as well.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from plait.wire.errors import TaskAborted, TaskTimeout


class Interrupts:
    """Where user code runs, and what SIGINT and SIGALRM do there (see the module
    documentation); the engine's main thread installs :meth:`handler`."""

    def __init__(self) -> None:
        self.depth = 0
        self.stop_when_idle = False
        self.ignored = 0  # interrupts that found no user code running
        self._limit: float | None = None  # the time limit running, if any
        self._expired = False  # it passed while plait's own code ran
        self.running_task: int | None = None  # the task whose code runs now, if any
        self._aborts: set[int] = set()  # tasks aborted while they ran, to interrupt

    @contextlib.contextmanager
    def user_code(self) -> Iterator[None]:
        if self._expired:  # the limit passed just before: the user code does not start
            self._expired = False
            raise self._timeout()
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def handler(self, signum: int, frame: Any) -> None:
        """SIGINT: a KeyboardInterrupt in user code; else nothing (see the module).
        A SIGINT sent for an aborted task (:meth:`abort`) raises TaskAborted in
        that task only: one that finished meanwhile leaves the next one alone."""
        if self._aborts:
            aborted = self.running_task in self._aborts and self.depth
            self._aborts.clear()
            if aborted:
                raise TaskAborted(f"task {self.running_task} was aborted while it ran")
            self.ignored += 1
            return
        if self.depth or self.stop_when_idle:
            raise KeyboardInterrupt
        self.ignored += 1

    def abort(self, taskids: list[int]) -> None:
        """(Any thread) Interrupt the task running now if it is one of ``taskids``."""
        running = self.running_task
        if running is not None and running in taskids:
            self._aborts.add(running)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    @contextlib.contextmanager
    def task(self, taskid: int | None) -> Iterator[None]:
        """(Main thread) Task ``taskid`` runs within."""
        self.running_task = taskid
        try:
            yield
        finally:
            self.running_task = None

    def _timeout(self) -> TaskTimeout:
        return TaskTimeout(f"the task ran past its time limit of {self._limit:g} s")

    def _alarm(self, signum: int, frame: Any) -> None:
        if self.depth:
            raise self._timeout()
        self._expired = True

    @contextlib.contextmanager
    def time_limit(self, seconds: float | None) -> Iterator[None]:
        """Within, user code running past ``seconds`` is interrupted with a
        TaskTimeout (a SIGALRM timer; only in the main thread, where user code runs)."""
        if not seconds or threading.current_thread() is not threading.main_thread():
            yield
            return
        self._limit, self._expired = seconds, False
        previous = signal.signal(signal.SIGALRM, self._alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            self._limit, self._expired = None, False


#: The engine's one :class:`Interrupts` (user code runs in its main thread only).
interrupts = Interrupts()
