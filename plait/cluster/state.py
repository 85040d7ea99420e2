"""The state file of a profile's running cluster: ``run/ipcluster.json``.

Whoever starts a cluster (``ipcluster start``, :class:`plait.parallel.Cluster`)
writes it, private to the user, once the engines are ready; ``ipcluster
stop``, ``ipcluster list``, ``ipcluster engines`` and ``Cluster.from_profile``
read it.  It records pids with their start times, so that a pid reused by
another process after a crash is never taken for ours::

    {"profile": "default", "controller": 123, "engines": [124, 125],
     "engine_sets": [{"launcher": "local", "pids": [124, 125], "ids": [0, 1]}],
     "ipcluster": null, "owner": 99, "started": {"123": "4567", ...}}

``engines`` lists every engine process, ``engine_sets`` how each group was
started (an ``mpi`` set also has the pid of its ``mpiexec`` in ``launcher_pid``);
``ipcluster`` is the pid of a foreground ipcluster, ``owner`` that of the
Python process of a :class:`~plait.parallel.Cluster`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plait.cluster.processes import pid_alive, start_time
from plait.security import ProfileDirs, plait_dir, profile_dirs, write_private

STATE_FILE = "ipcluster.json"


def state_path(dirs: ProfileDirs) -> Path:
    return dirs.run / STATE_FILE


def ours(state: dict, pid: int) -> bool:
    """Whether ``pid`` is still the process the state recorded."""
    recorded = state.get("started", {}).get(str(pid))
    return pid_alive(pid) and (recorded is None or recorded == start_time(pid))


def read_state(dirs: ProfileDirs) -> dict | None:
    """The state of the profile's cluster while its controller (or the keeper that
    starts it again) runs, else None.  (The
    state of a controller on another host, over SSH or in a batch allocation, is
    taken as it is: asking that host is for ClusterProcesses.running().)"""
    try:
        state = json.loads(state_path(dirs).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    if state.get("remote") or state.get("allocation"):
        return state  # a controller of another host: its file goes when it is stopped
    # a controller that died is being started again while its keeper runs
    alive = [pid for pid in (state.get("controller"), state.get("keeper"))
             if isinstance(pid, int) and ours(state, pid)]
    return state if alive else None


def write_state(dirs: ProfileDirs, state: dict) -> None:
    """Write ``state`` (private to the user), recording the start time of every pid."""
    pids = [state.get("controller"), state.get("keeper"), state.get("ipcluster"),
            state.get("owner"),
            *state.get("engines", [])]  # (local pids only: SSH engines' are their hosts')
    for group in state.get("engine_sets", []):
        if group.get("launcher") != "ssh":  # (an SSH set's supervisor is its host's)
            pids.append(group.get("launcher_pid"))
    started = dict(state.get("started", {}))
    for pid in pids:
        if isinstance(pid, int) and str(pid) not in started:
            started[str(pid)] = start_time(pid)
    write_private(state_path(dirs), json.dumps({**state, "started": started}))


@contextlib.contextmanager
def locked(dirs: ProfileDirs) -> Iterator[None]:
    """Hold the profile's state lock: one reads and writes the state file at a
    time (``ipcluster`` and the cluster's keeper both do)."""
    fd = os.open(dirs.run / "ipcluster.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def clear_state(dirs: ProfileDirs) -> None:
    try:
        state_path(dirs).unlink()
    except FileNotFoundError:
        pass


def running_clusters() -> list[dict[str, Any]]:
    """The state of every profile's running cluster under ``$PLAIT_DIR``, by profile name."""
    found = []
    root = plait_dir()
    for folder in sorted(root.glob("profile_*")) if root.is_dir() else ():
        name = folder.name[len("profile_"):]
        try:
            dirs = profile_dirs(name, create=False)
        except ValueError:
            continue
        state = read_state(dirs)
        if state is not None:
            found.append({**state, "profile": name})
    return found
