"""A controller on another host, started and stopped over SSH.

``Cluster(controller='ssh', controller_host='user@head')`` (``ipcluster start
--controller=ssh --controller-host=user@head``) runs ``ipcontroller`` on that
host, as the user's own process there: one SSH session runs this module on
the far side (``python -m plait.cluster.remote``), which starts the
controller in a session of its own (it outlives the SSH session), waits for
its ready notice and prints, as one JSON line, its pid, its start time and
the contents of its FURL files and of its enrollment key.  They travel
inside the SSH session and are written here into the profile's security
folder, private (0600), as if the controller ran here: clients and engine launchers of this
host then find them where they always do.  Only then does this side say
``keep`` on the session's stdin; a start interrupted before (the session
ends) makes the far side stop the controller, so nothing is left running.

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
import os
import selectors
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from plait.cluster.launchers import read_ready, spawn_controller, ssh_prefix
from plait.cluster.processes import start_time, terminate
from plait.security import (
    ENGINE_FURL,
    ENROLL_KEY,
    MEC_FURL,
    PARALLEL_FURL,
    TC_FURL,
    ProfileDirs,
    check_furl,
    enrollment_key,
    profile_dirs,
    write_private,
)
from plait.wire.errors import ClusterError

#: Seconds an SSH command to the controller's host may take (beyond the start timeout).
SSH_SLACK = 30.0


@dataclass
class RemoteController:
    """A controller running on ``host`` (reached with the command ``ssh``);
    ``started`` is its start time there, so that a pid the host gave to
    another process since is never signalled."""

    host: str
    ssh: list[str] = field(repr=False)
    pid: int
    log: str = ""
    started: str = ""

    def _ours(self) -> str:
        """A shell test: the pid is still the controller (its start time matches)."""
        return (f's=$(cat /proc/{self.pid}/stat 2>/dev/null) && s=${{s##*)}} && set -- $s '
                f'&& [ "${{20}}" = {shlex.quote(self.started)} ]')

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
        return self._run(self._ours()) == 0

    def stop(self) -> bool:
        """SIGTERM the controller, then SIGKILL it if it is still there after 3 s;
        whether its host could be asked (False: ssh failed, it may still run)."""
        pid = self.pid
        return self._run(f"{self._ours()} || exit 0; kill -15 {pid} 2>/dev/null; "
                         f"for i in $(seq 30); do kill -0 {pid} 2>/dev/null || exit 0; "
                         f"sleep 0.1; done; kill -9 {pid} 2>/dev/null; true") is not None

    def to_state(self) -> dict[str, Any]:
        return {"host": self.host, "ssh": list(self.ssh), "pid": self.pid, "log": self.log,
                "started": self.started}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RemoteController:
        return cls(state["host"], list(state["ssh"]), int(state["pid"]), state.get("log", ""),
                   str(state.get("started", "")))


#: The FURL files a remote controller must send back.
NEEDED_FURLS = (ENGINE_FURL, MEC_FURL, TC_FURL, PARALLEL_FURL)


def start_remote_controller(host: str, profile: str | None, controller_args: list[str],
                            dirs: ProfileDirs, timeout: float, *, command: str = "ssh",
                            args: tuple[str, ...] = (), python: str | None = None,
                            plait_dir: str | None = None) -> RemoteController:
    """Start ``ipcontroller controller_args`` on ``host``; returns once it is ready
    and its FURL files are in ``dirs.security``.  ClusterError saying what
    failed (ssh's message, or the controller's) otherwise, nothing left running:
    the far side keeps the controller only once told to, so a start that is
    interrupted here (Ctrl-C, a timeout, a lost connection) stops it there."""
    prefix = ssh_prefix(host, command, args)
    remote = [python or sys.executable, "-m", "plait.cluster.remote", f"--timeout={timeout:g}",
              *([f"--profile={profile}"] if profile else []), "--", *controller_args]
    if plait_dir:
        remote = ["env", f"PLAIT_DIR={plait_dir}", *remote]
    try:
        proc = subprocess.Popen([*prefix, shlex.join(remote)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise ClusterError(f"cannot start the controller on {host}: {command!r} is not "
                           f"installed") from None
    try:
        answer, said = _answer(proc, host, timeout + SSH_SLACK)
        controller = _checked(answer, said, proc, host, prefix)
        for name in NEEDED_FURLS:  # no stale FURL of an earlier controller stays
            (dirs.security / name).unlink(missing_ok=True)
        for name, furl in answer["furls"].items():
            write_private(dirs.security / name, furl + "\n")
        write_private(dirs.security / ENROLL_KEY, answer["enroll_key"] + "\n")
        assert proc.stdin is not None
        proc.stdin.write(b"keep\n")  # from now on, the controller stays
        proc.stdin.close()
        proc.wait(timeout=SSH_SLACK)
    except BaseException:
        proc.kill()  # the far side sees its session end, and stops the controller
        proc.wait()
        raise
    return controller


def _answer(proc: subprocess.Popen, host: str, within: float) -> tuple[dict, str]:
    """The far side's JSON line (or ``{}`` when it ended without one), and what
    ssh wrote to its standard error; ClusterError after ``within`` seconds."""
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + within
    out = err = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        while b"\n" not in out and sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClusterError(f"the controller on {host} was not ready within "
                                   f"{within:g} s")
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    out += chunk
                else:
                    err += chunk
    try:
        answer = json.loads(out.split(b"\n", 1)[0]) if out else {}
    except ValueError:
        answer = {}
    return (answer if isinstance(answer, dict) else {}), err.decode(errors="replace")


def _checked(answer: dict, said: str, proc: subprocess.Popen, host: str,
             prefix: list[str]) -> RemoteController:
    """The controller the far side describes; ClusterError when it says it failed,
    or says nothing usable."""
    if "error" in answer:
        raise ClusterError(f"the controller on {host} did not start: {answer['error']}")
    pid, furls = answer.get("pid"), answer.get("furls")
    if not (isinstance(pid, int) and pid > 1 and isinstance(furls, dict)):
        lines = said.strip().splitlines()
        code = proc.poll()
        raise ClusterError(f"could not start the controller on {host}: "
                           f"{lines[-1] if lines else f'ssh exited with code {code}'}")
    missing = [name for name in NEEDED_FURLS if not isinstance(furls.get(name), str)]
    if missing or set(furls) - set(NEEDED_FURLS):
        raise ClusterError(f"the controller on {host} sent the wrong FURL files "
                           f"(missing {missing}, or names it should not send)")
    for name, furl in furls.items():
        try:
            check_furl(furl, f"the {name} of the controller on {host}")
        except ValueError as exc:
            raise ClusterError(str(exc)) from None
    key = answer.get("enroll_key")
    if not (isinstance(key, str) and len(key) == 64
            and all(c in "0123456789abcdef" for c in key)):
        raise ClusterError(f"the controller on {host} sent no enrollment key (is plait "
                           f"there as new as here?)")
    return RemoteController(host, prefix, pid, str(answer.get("log", "")),
                            str(answer.get("started", "")))


# -- the far side ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """(On the controller's host) start the controller; print ``{"pid", "started",
    "log", "furls"}`` or ``{"error"}`` as one JSON line; then keep the controller
    only if told ``keep`` on standard input (else, the far end went away: stop it)."""
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
        furls = {name: (dirs.security / name).read_text().strip() for name in NEEDED_FURLS}
        key = enrollment_key(dirs).hex()
        print(json.dumps({"pid": proc.pid, "started": start_time(proc.pid) or "",
                          "log": str(dirs.log), "furls": furls, "enroll_key": key}),
              flush=True)
        keep = sys.stdin.readline().strip() == "keep"
    except (ClusterError, OSError, ValueError) as exc:  # (a broken pipe: the far end went)
        if proc is not None:
            terminate([proc.pid])
        try:
            print(json.dumps({"error": str(exc)}), flush=True)
        except OSError:
            pass
        return 1
    if not keep:
        terminate([proc.pid])
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
