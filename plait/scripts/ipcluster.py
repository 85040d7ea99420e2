"""``ipcluster``: a controller and engines on this host, with one command.

``ipcluster start -n 4`` (or ``ipcluster -n 4``) runs a controller and four
engines in the foreground until Ctrl-C.  With ``--daemonize`` it returns as
soon as every engine is registered (exit 0), or fails after ``--timeout``
seconds, leaving nothing running.  ``ipcluster stop`` ends a daemonized
cluster of the profile.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from plait.scripts._common import add_profile_option, dirs_for
from plait.security import ProfileDirs, write_private
from plait.wire.errors import ClusterError

STATE_FILE = "ipcluster.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipcluster",
        description="Start or stop a plait controller with engines on this host.",
        epilog="'ipcluster -n 4' is short for 'ipcluster start -n 4'.",
    )
    sub = p.add_subparsers(dest="command")
    start = sub.add_parser("start", help="start a controller and engines")
    add_profile_option(start)
    start.add_argument("-n", "--n", type=int, default=None, dest="n",
                       help="number of engines (default: the number of CPUs)")
    start.add_argument("--daemonize", action="store_true",
                       help="return once the engines are ready; stop with 'ipcluster stop'")
    start.add_argument("--timeout", type=float, default=30.0,
                       help="seconds to wait for the engines to be ready (default 30)")
    for opt in ("--ip", "--location", "--scheme", "--db"):
        start.add_argument(opt, default=None, help=f"passed to ipcontroller {opt}")
    for opt in ("--hwm", "--client-port", "--engine-port"):
        start.add_argument(opt, type=int, default=None, help=f"passed to ipcontroller {opt}")
    start.add_argument("--engine-timeout", type=int, default=None,
                       help="passed to ipcontroller --engine-timeout")
    stop = sub.add_parser("stop", help="stop the cluster of a profile")
    add_profile_option(stop)
    return p


def _controller_args(args: argparse.Namespace) -> list[str]:
    out = []
    for name in ("ip", "location", "scheme", "db", "hwm", "client_port", "engine_port",
                 "engine_timeout"):
        value = getattr(args, name)
        if value is not None:
            out.append(f"--{name.replace('_', '-')}={value}")
    return out


class Cluster:
    """The processes of one local cluster, started by this ipcluster."""

    def __init__(self, dirs: ProfileDirs, profile: str | None, daemonize: bool):
        self.dirs = dirs
        self.profile = profile
        self.daemonize = daemonize
        self.controller: subprocess.Popen | None = None
        self.engines: list[subprocess.Popen] = []
        self.selector = selectors.DefaultSelector()

    def _spawn(self, module: str, extra: list[str], stdin: bool = False
               ) -> tuple[subprocess.Popen, int]:
        r, w = os.pipe()
        cmd = [sys.executable, "-m", module, f"--notify-fd={w}"]
        if self.profile:
            cmd.append(f"--profile={self.profile}")
        proc = subprocess.Popen(
            cmd + extra,
            pass_fds=(w,),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if self.daemonize else None,
            start_new_session=self.daemonize,
        )
        os.close(w)
        return proc, r

    def start(self, n: int, controller_args: list[str], timeout: float) -> list[int]:
        """Start everything; returns the engine ids.  Raises ClusterError."""
        deadline = time.monotonic() + timeout
        self.controller, cfd = self._spawn("plait.scripts.ipcontroller", controller_args)
        # Engines start at once, importing while the controller comes up; they
        # get the engine FURL on stdin when it is ready.
        pending = {}
        for _ in range(n):
            proc, fd = self._spawn("plait.scripts.ipengine", ["--furl-file=-"], stdin=True)
            self.engines.append(proc)
            pending[fd] = proc
        line = self._read_line(cfd, deadline, "the controller")
        if not line.startswith("ready "):
            raise ClusterError(f"the controller did not start: {line or 'it exited'}; "
                               f"see its log in {self.dirs.log}")
        furl = Path(line.split(" ", 1)[1]).read_text().strip()
        for proc in self.engines:
            assert proc.stdin is not None  # engines are spawned with stdin=True
            try:
                proc.stdin.write((furl + "\n").encode())
                proc.stdin.close()
            except OSError:
                pass
        ids: list[int] = []
        for fd in pending:
            self.selector.register(fd, selectors.EVENT_READ)
        buffers = {fd: b"" for fd in pending}
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClusterError(
                    f"only {len(ids)} of {n} engines were ready within {timeout:g} s; "
                    f"see the logs in {self.dirs.log}"
                )
            for key, _ in self.selector.select(left):
                chunk = os.read(key.fd, 256)
                buffers[key.fd] += chunk
                if chunk and not buffers[key.fd].endswith(b"\n"):
                    continue
                self.selector.unregister(key.fd)
                os.close(key.fd)
                proc = pending.pop(key.fd)
                text = buffers[key.fd].decode().strip()
                if not text.startswith("engine "):
                    raise ClusterError(
                        f"an engine (pid {proc.pid}) exited before registering; "
                        f"see its log in {self.dirs.log}"
                    )
                ids.append(int(text.split()[1]))
        return sorted(ids)

    def _read_line(self, fd: int, deadline: float, what: str) -> str:
        data = b""
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while not data.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise ClusterError(f"{what} was not ready in time; see {self.dirs.log}")
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
        finally:
            sel.close()
            os.close(fd)
        return data.decode().strip()

    def pids(self) -> dict:
        procs = [*([self.controller] if self.controller else []), *self.engines]
        return {
            "controller": self.controller.pid if self.controller else None,
            "engines": [p.pid for p in self.engines],
            "started": {str(p.pid): start_time(p.pid) for p in procs},
        }

    def stop(self) -> None:
        procs = [*self.engines, *([self.controller] if self.controller else [])]
        terminate([p.pid for p in procs if p.poll() is None])
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


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
    except ProcessLookupError:
        pass


def _state_path(dirs: ProfileDirs) -> Path:
    return dirs.run / STATE_FILE


def _running_state(dirs: ProfileDirs) -> dict | None:
    try:
        state = json.loads(_state_path(dirs).read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("controller")
    return state if pid and _ours(state, pid) else None


def _ours(state: dict, pid: int) -> bool:
    """Whether ``pid`` is still the process the state file recorded."""
    recorded = state.get("started", {}).get(str(pid))
    return pid_alive(pid) and (recorded is None or recorded == start_time(pid))


def cmd_start(args: argparse.Namespace) -> int:
    dirs = dirs_for(args.profile)
    n = args.n if args.n is not None else (os.cpu_count() or 2)
    if n < 1:
        print("error: -n must be at least 1", file=sys.stderr)
        return 2
    if _running_state(dirs):
        print(f"error: a cluster is already running for profile "
              f"'{args.profile or 'default'}'; stop it with 'ipcluster stop'", file=sys.stderr)
        return 1
    cluster = Cluster(dirs, args.profile, args.daemonize)
    started = time.monotonic()
    # From here on, Ctrl-C or SIGTERM at any moment stops what was started.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        ids = cluster.start(n, _controller_args(args), args.timeout)
        state = {**cluster.pids(), "profile": args.profile or "default",
                 "ipcluster": None if args.daemonize else os.getpid()}
        if not args.daemonize:
            state["started"][str(os.getpid())] = start_time(os.getpid())
        _write_state(dirs, state)
        profile_arg = f"profile={args.profile!r}" if args.profile else ""
        print(f"plait cluster ready: controller and {len(ids)} engines {ids} "
              f"in {time.monotonic() - started:.2f} s\n"
              f"connect with:\n"
              f"    from plait.kernel import client\n"
              f"    mec = client.MultiEngineClient({profile_arg})\n"
              f"    tc = client.TaskClient({profile_arg})\n"
              f"or, the later generation (as ipyparallel):\n"
              f"    import plait.parallel as ipp\n"
              f"    rc = ipp.Client({profile_arg})", flush=True)
        if args.daemonize:
            print("stop it with: ipcluster stop"
                  + (f" --profile={args.profile}" if args.profile else ""), flush=True)
            return 0
        print("press Ctrl-C to stop the cluster", flush=True)
        assert cluster.controller is not None  # started by cluster.start
        cluster.controller.wait()
        print("the controller exited; stopping the engines", flush=True)
        code = 0
    except (ClusterError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 0 if _state_path(dirs).exists() else 130
    # Only the foreground or a failed start gets here: stop everything.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cluster.stop()
    try:
        _state_path(dirs).unlink()
    except FileNotFoundError:
        pass
    if code == 0:
        print("plait cluster stopped", flush=True)
    return code


def _interrupt(*args: object) -> None:
    raise KeyboardInterrupt


def _write_state(dirs: ProfileDirs, state: dict) -> None:
    write_private(_state_path(dirs), json.dumps(state))


def cmd_stop(args: argparse.Namespace) -> int:
    dirs = dirs_for(args.profile)
    state = _running_state(dirs)
    if state is None:
        print(f"no cluster is running for profile '{args.profile or 'default'}'", file=sys.stderr)
        try:
            _state_path(dirs).unlink()
        except FileNotFoundError:
            pass
        return 1
    pids = [*state.get("engines", []), state["controller"]]
    if state.get("ipcluster"):
        pids.append(state["ipcluster"])
    terminate([p for p in pids if _ours(state, p)])
    try:
        _state_path(dirs).unlink()
    except FileNotFoundError:
        pass
    print("plait cluster stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("start", "stop", "-h", "--help"):
        argv.insert(0, "start")
    args = build_parser().parse_args(argv)
    if args.command == "stop":
        return cmd_stop(args)
    return cmd_start(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
