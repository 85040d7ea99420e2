"""A controller on another host, started and stopped over SSH.

``Cluster(controller='ssh', controller_host='user@head')`` (``ipcluster start
--controller=ssh --controller-host=user@head``) runs ``ipcontroller`` on that
host, as the user's own process there: one SSH session runs this module on
the far side (``python -m plait.cluster.remote``), which starts the
controller in a session of its own (it outlives the SSH session), waits for
its ready notice and prints, as one JSON line, its pid and the contents of
its FURL files.  The FURL files travel inside the SSH session and are
written here into the profile's security folder, private (0600), as if the
controller ran here: clients and engine launchers of this host then find
them where they always do.

The far host must have plait installed (``ssh_python`` names its Python)
and a PLAIT_DIR of its own (``ssh_plait_dir``), where the controller keeps
its hub database and logs.  Clients and engines reach the controller at the
address its FURLs name (``ip=`` / ``location=``, an address of that host
they can reach), or, with ``tunnel=True``, through SSH tunnels to that host
(see :mod:`plait.wire.tunnel`), which lets it listen on its loopback only.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from plait.cluster.launchers import read_ready, spawn_controller, ssh_prefix
from plait.cluster.processes import terminate
from plait.security import ProfileDirs, profile_dirs, write_private
from plait.wire.errors import ClusterError

#: Seconds an SSH command to the controller's host may take (beyond the start timeout).
SSH_SLACK = 30.0


@dataclass
class RemoteController:
    """A controller running on ``host`` (reached with the command ``ssh``)."""

    host: str
    ssh: list[str] = field(repr=False)
    pid: int
    log: str = ""

    def _run(self, command: str, timeout: float = SSH_SLACK) -> int | None:
        """The exit code of the shell ``command`` run on the host; None when ssh fails."""
        try:
            done = subprocess.run([*self.ssh, command], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=timeout)
        except (OSError, subprocess.SubprocessError):
            return None
        return None if done.returncode == 255 else done.returncode

    def alive(self) -> bool:
        """Whether the controller still runs (asked over SSH)."""
        return self._run(f"kill -0 {self.pid} 2>/dev/null") == 0

    def stop(self) -> None:
        """SIGTERM the controller, then SIGKILL it if it is still there after 3 s."""
        self._run(f"kill -15 {self.pid} 2>/dev/null; for i in $(seq 30); do "
                  f"kill -0 {self.pid} 2>/dev/null || exit 0; sleep 0.1; done; "
                  f"kill -9 {self.pid} 2>/dev/null; true")

    def to_state(self) -> dict[str, Any]:
        return {"host": self.host, "ssh": list(self.ssh), "pid": self.pid, "log": self.log}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RemoteController:
        return cls(state["host"], list(state["ssh"]), int(state["pid"]), state.get("log", ""))


def start_remote_controller(host: str, profile: str | None, controller_args: list[str],
                            dirs: ProfileDirs, timeout: float, *, command: str = "ssh",
                            args: tuple[str, ...] = (), python: str | None = None,
                            plait_dir: str | None = None) -> RemoteController:
    """Start ``ipcontroller controller_args`` on ``host``; returns once it is ready
    and its FURL files are in ``dirs.security``.  ClusterError saying what
    failed (ssh's message, or the controller's) otherwise, nothing left running."""
    prefix = ssh_prefix(host, command, args)
    remote = [python or sys.executable, "-m", "plait.cluster.remote", f"--timeout={timeout:g}",
              *([f"--profile={profile}"] if profile else []), "--", *controller_args]
    if plait_dir:
        remote = ["env", f"PLAIT_DIR={plait_dir}", *remote]
    try:
        done = subprocess.run([*prefix, shlex.join(remote)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout + SSH_SLACK)
    except FileNotFoundError:
        raise ClusterError(f"cannot start the controller on {host}: {command!r} is not "
                           f"installed") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"the controller on {host} was not ready within "
                           f"{timeout + SSH_SLACK:g} s (its ssh session did not end)") from None
    answer: dict[str, Any] = {}
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if "error" in answer:
        raise ClusterError(f"the controller on {host} did not start: {answer['error']}")
    if "pid" not in answer:
        said = done.stderr.strip().splitlines()
        raise ClusterError(f"could not start the controller on {host}: "
                           f"{said[-1] if said else f'ssh exited with code {done.returncode}'}")
    controller = RemoteController(host, prefix, int(answer["pid"]), answer.get("log", ""))
    try:
        for name, furl in answer["furls"].items():
            if "/" in name or not name.endswith(".furl"):
                raise ClusterError(f"the controller on {host} named a FURL file {name!r}")
            write_private(dirs.security / name, furl + "\n")
    except BaseException:
        controller.stop()
        raise
    return controller


# -- the far side ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """(On the controller's host) start the controller; print ``{"pid", "log",
    "furls"}`` or ``{"error"}`` as one JSON line."""
    p = argparse.ArgumentParser(prog="python -m plait.cluster.remote")
    p.add_argument("--profile", default=None)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("controller_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    extra = [a for a in args.controller_args if a != "--"]
    proc = None
    try:
        dirs = profile_dirs(args.profile)
        proc, ready = spawn_controller(args.profile, extra, detach=True)
        read_ready(ready, proc, time.monotonic() + args.timeout, dirs)
        furls = {path.name: path.read_text().strip()
                 for path in sorted(dirs.security.glob("ipcontroller-*.furl"))}
    except (ClusterError, OSError) as exc:
        if proc is not None:
            terminate([proc.pid])
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    print(json.dumps({"pid": proc.pid, "log": str(dirs.log), "furls": furls}), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
