"""The keeper: starts a cluster's controller again when it dies.

``ipcluster start`` (and :class:`plait.parallel.Cluster`) run one beside
the controller, unless told ``--no-restart-controller``:
``python -m plait.cluster.keeper --pid PID [--profile P] -- ARGS``.  It does
not stand between the cluster and its controller (the cluster's start waits
for no one more): it watches the controller's pid through a pidfd.

When the controller is gone without having stopped cleanly (a clean stop,
SIGTERM, ``rc.shutdown(hub=True)`` or ``mec.kill(controller=True)``, leaves
``run/ipcontroller.stopped``), the keeper starts ``ipcontroller ARGS`` again
on the same profile.  That controller listens on the same ports, so its FURLs
are the same; it keeps the hub's records and goes on from the last run's task
and engine ids.  The keeper writes its pid into the cluster's state file and
watches it in turn.  Engines rejoin it on their own, keeping their ids and
namespaces (``ipengine --reconnect``); clients reconnect on their next call.

More than :data:`MAX_RESTARTS` restarts within :data:`RESTART_WINDOW`
seconds, and the keeper gives up.  What it does goes to
``log/ipcluster-keeper.log``.  SIGTERM ends it (``ipcluster stop`` ends the
keeper first, then the controller), and so does the end of the cluster's
state file.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import time
from typing import Any

from plait.cluster import state as _state
from plait.cluster.launchers import read_ready, spawn_controller
from plait.cluster.processes import start_time
from plait.security import ProfileDirs, profile_dirs

#: Restarts allowed within :data:`RESTART_WINDOW` seconds, before the keeper gives up.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0

#: Seconds a restarted controller has to say it is ready.
READY_TIMEOUT = 60.0


class Keeper:
    """Watches the controller of one profile's cluster and starts it again."""

    def __init__(self, dirs: ProfileDirs, profile: str | None, args: list[str], pid: int):
        self.dirs = dirs
        self.profile = profile
        self.args = args
        self.pid = pid
        self.proc: Any = None  # the controller, once this keeper started it
        self.restarts: list[float] = []
        self.stopping = False
        # a signal wakes the wait at once (SIGTERM: ipcluster stop waits for us)
        self._wakeup_r, wakeup_w = os.pipe()
        os.set_blocking(wakeup_w, False)
        signal.set_wakeup_fd(wakeup_w)

    def log(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} keeper {os.getpid()}: {text}\n"
        fd = os.open(self.dirs.log / "ipcluster-keeper.log",
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(line)

    def run(self) -> int:
        """Watch, restart, watch: until stopped, or until restarts run out."""
        while not self.stopping:
            self._wait_for_exit()
            if self.stopping:
                break
            if self.dirs.controller_stopped.exists():
                self.log(f"the controller (pid {self.pid}) stopped cleanly; nothing to do")
                return 0
            if _state.read_state(self.dirs) is None:
                self.log("the cluster was stopped; nothing to do")
                return 0
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW]
            if len(self.restarts) >= MAX_RESTARTS:
                self.log(f"the controller died {MAX_RESTARTS} times within "
                         f"{RESTART_WINDOW:g} s: the keeper gives up (see the controller "
                         f"logs in {self.dirs.log})")
                return 1
            self.restarts.append(now)
            self.log(f"the controller (pid {self.pid}) died: starting it again")
            if not self._restart():
                return 1
        return 0

    def _wait_for_exit(self) -> None:
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return  # gone already
        try:
            while not self.stopping:
                if fd in select.select([fd, self._wakeup_r], [], [])[0]:
                    break
                os.read(self._wakeup_r, 512)
        finally:
            os.close(fd)
        if self.proc is not None:
            self.proc.wait()  # our child: reap it

    def _restart(self) -> bool:
        try:
            proc, ready_fd = spawn_controller(self.profile, [*self.args, "--restore"],
                                              detach=True)
        except OSError as exc:
            self.log(f"could not start the controller: {exc}")
            return False
        self.proc, self.pid = proc, proc.pid
        # recorded at once, so that a stop meanwhile finds it (and stops it)
        with _state.locked(self.dirs):
            recorded = _state.read_state(self.dirs)
            if recorded is not None:
                started = dict(recorded.get("started", {}))
                started[str(proc.pid)] = start_time(proc.pid)
                _state.write_state(self.dirs, {**recorded, "controller": proc.pid,
                                               "started": started})
        if recorded is None:  # stopped meanwhile: so is this controller
            self.log("the cluster was stopped while its controller restarted")
            os.close(ready_fd)
            proc.terminate()
            proc.wait()
            return False
        try:
            read_ready(ready_fd, proc, time.monotonic() + READY_TIMEOUT, self.dirs)
        except Exception as exc:
            self.log(f"the new controller (pid {proc.pid}) did not start: {exc}")
            proc.kill()
            proc.wait()
            return False
        self.log(f"the controller runs again (pid {proc.pid})")
        return True

    def stop(self, *args: Any) -> None:
        self.stopping = True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m plait.cluster.keeper",
                                description="start a cluster's controller again when it dies")
    p.add_argument("--profile", default=None)
    p.add_argument("--pid", type=int, required=True, help="the controller to watch")
    p.add_argument("args", nargs=argparse.REMAINDER, help="-- then ipcontroller's arguments")
    ns = p.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    keeper = Keeper(profile_dirs(ns.profile), ns.profile, args, ns.pid)
    signal.signal(signal.SIGTERM, keeper.stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the terminal is ipcluster's
    return keeper.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
