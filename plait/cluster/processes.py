"""Processes by pid: whether they run, when they started, and stopping them for sure."""

from __future__ import annotations

import os
import selectors
import signal
import time
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # the state field follows the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: trust kill(0)


def start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), to tell it from a
    later process that got the same pid; None when unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return None


def wait_for_exit(pid: int) -> None:
    """Return once process ``pid`` (any process, not only a child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not sel.select():
                pass
    finally:
        os.close(fd)


def terminate(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM ``pids``, wait for them to exit, SIGKILL those still there after ``grace``.

    Waiting uses pidfds (no polling, and no risk of signalling a process that
    reused a pid); where they are unavailable, it polls.
    """
    pidfds: dict[int, int] = {}
    polled: list[int] = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except (OSError, AttributeError):
            polled.append(pid)
            _signal(pid, None, signal.SIGTERM)
            continue
        pidfds[fd] = pid
        _signal(pid, fd, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with selectors.DefaultSelector() as sel:
        for fd in pidfds:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(left):
                sel.unregister(key.fd)
        stragglers: list[tuple[int, int | None]] = [
            (pidfds[key.fd], key.fd) for key in sel.get_map().values()
        ]
    while polled and time.monotonic() < deadline:
        polled = [pid for pid in polled if pid_alive(pid)]
        if polled:
            time.sleep(0.02)  # fallback without pidfds: poll
    stragglers += [(pid, None) for pid in polled]
    for pid, pidfd in stragglers:
        _signal(pid, pidfd, signal.SIGKILL)
    for fd in pidfds:
        os.close(fd)


def _signal(pid: int, pidfd: int | None, sig: int) -> None:
    try:
        if pidfd is not None and hasattr(signal, "pidfd_send_signal"):
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # gone, or a pid another user's process took over: not ours to signal


def signal_pids(pids: list[int], sig: int) -> list[int]:
    """Send ``sig`` to each of ``pids`` that still runs; the pids it reached."""
    reached = []
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue
        reached.append(pid)
    return reached
