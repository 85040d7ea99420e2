"""Real clusters for the tests: processes started by the plait commands.

Every cluster lives in a temporary ``PLAIT_DIR`` and listens on ephemeral
ports of 127.0.0.1; readiness is event-driven (``ipcluster start
--daemonize`` returns only when every engine is registered).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from plait.scripts.ipcluster import pid_alive

PYTHON = sys.executable


def run_cmd(args: list[str], env: dict, timeout: float = 60, check: bool = True,
            **kw) -> subprocess.CompletedProcess:
    """Run a plait command (``ipcluster ...``) and capture its output."""
    proc = subprocess.run(
        [PYTHON, "-m", f"plait.scripts.{args[0]}", *args[1:]],
        env=env, capture_output=True, text=True, timeout=timeout, **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
            f"stderr:\n{proc.stderr}"
        )
    return proc


@dataclass
class Cluster:
    """A daemonized cluster started by ``ipcluster``, in its own PLAIT_DIR."""

    plait_dir: Path
    env: dict
    n: int
    profile: str = "default"
    extra: list[str] = field(default_factory=list)

    @property
    def security(self) -> Path:
        return self.plait_dir / f"profile_{self.profile}" / "security"

    def furl_file(self, name: str) -> str:
        return str(self.security / f"ipcontroller-{name}.furl")

    def state(self) -> dict:
        path = self.plait_dir / f"profile_{self.profile}" / "run" / "ipcluster.json"
        return json.loads(path.read_text())

    def start(self) -> subprocess.CompletedProcess:
        return run_cmd(
            ["ipcluster", "start", "-n", str(self.n), "--daemonize", "--timeout", "60",
             f"--profile={self.profile}", *self.extra],
            self.env,
        )

    def stop(self) -> None:
        try:
            state = self.state()
        except (OSError, ValueError):
            return
        run_cmd(["ipcluster", "stop", f"--profile={self.profile}"], self.env, check=False)
        for pid in [state.get("keeper"), *state.get("engines", []), state.get("controller")]:
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def enroll_flag(self, n: int = 1) -> str:
        """``--enroll-file=F`` for ``n`` engines started by hand (this cluster's
        controller admits enrolled engines only)."""
        return enroll_flag(self.security, n)

    def mec(self, **kw):
        from plait.kernel import client

        return client.MultiEngineClient(self.furl_file("mec"), **kw)

    def tc(self, **kw):
        from plait.kernel import client

        return client.TaskClient(self.furl_file("tc"), **kw)

    def rc(self, **kw):
        """A ``plait.parallel.Client`` of this cluster."""
        import plait.parallel

        return plait.parallel.Client(self.furl_file("client"), **kw)


def enroll_flag(security: Path, n: int = 1) -> str:
    """``--enroll-file=F``: a new secrets file of ``n`` secrets issued under the key
    in the ``security`` folder, for engines started by hand."""
    from plait.wire import enrollment

    key = bytes.fromhex((security / "ipcontroller-enroll.key").read_text().strip())
    path = security / f"hand-{os.getpid()}-{time.monotonic_ns()}.secrets"
    enrollment.write_secrets(path, enrollment.issue(key, n))
    return f"--enroll-file={path}"


def make_env(plait_dir: Path) -> dict:
    env = dict(os.environ)
    env["PLAIT_DIR"] = str(plait_dir)
    env.pop("PYTHONSTARTUP", None)
    return env


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait for a process (not our child) to exit, without polling: pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0]) or not pid_alive(pid)
    finally:
        os.close(fd)


def processes_of(plait_dir: Path) -> list[int]:
    """The live processes whose environment has ``PLAIT_DIR=plait_dir`` (ours only)."""
    marker = f"PLAIT_DIR={plait_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def left_running(plait_dir: Path, besides: Collection[int] = ()) -> list[int]:
    """Processes of ``plait_dir`` (but ``besides``) still there once each had 5 s to exit."""
    return [pid for pid in processes_of(plait_dir)
            if pid not in besides and not wait_exit(pid, 5)]


def engine_pid(rc, engine_id: int, than: int | None = None, within: float = 30) -> int:
    """The pid of engine ``engine_id``; with ``than``, once it is another one (the
    engine was replaced): the controller tells nobody, so the client asks."""
    deadline = time.monotonic() + within
    while True:
        try:
            pid = rc[engine_id].apply_sync(os.getpid)
        except Exception:  # (not registered again yet)
            pid = None
        if pid is not None and pid != than:
            return pid
        if time.monotonic() > deadline:
            raise AssertionError(f"engine {engine_id} was not replaced within {within} s")
        time.sleep(0.05)


def wait_for_engines(mec: Any, n: int) -> list[int]:
    """Wait (30 s at most) until the controller of ``mec`` has ``n`` engines; their ids."""
    from plait.kernel.client import _reactor
    from plait.kernel.client._base import raise_outcome

    def wait() -> Any:
        return mec.asynchronous._remote_call("wait_for_engines", n).addCallback(raise_outcome)

    return _reactor.call(wait, timeout=30)


class Gate:
    """A named pipe: a task reading it waits until the test calls :meth:`open`."""

    def __init__(self, folder: Path, name: str = "gate"):
        self.path = str(folder / name)
        os.mkfifo(self.path)

    @property
    def wait_code(self) -> str:
        return f"open({self.path!r}).read()"

    def waiter(self):
        """A function (sent by value) that waits until the gate opens."""
        path = self.path

        def wait_for_gate(*args, **kwargs):
            with open(path) as f:
                return f.read()

        return wait_for_gate

    def open(self) -> None:
        with open(self.path, "w") as f:
            f.write("go")

    def release(self, timeout: float = 10.0) -> bool:
        """Open the gate for a task that waits at it, or will within ``timeout``
        seconds; False (nothing opened) when none does: never blocks for ever."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # (no reader yet)
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)  # (a poll of the FIFO: there is no event to wait on)
                continue
            os.write(fd, b"go")
            os.close(fd)
            return True


@contextlib.contextmanager
def opened_once_a_bar_shows(monkeypatch: Any, folder: Path) -> Any:
    """A :class:`Gate` (and the Event set once a bar showed) that opens as soon
    as a progress bar shows, with bars shown by default after 0.05 s: a wait on
    a task held at the gate must show one to end."""
    from plait.kernel.client import _progress

    monkeypatch.setattr(_progress, "PROGRESS_AFTER", 0.05)
    gate = Gate(folder)
    shown = threading.Event()
    make_bar = _progress.make_bar

    def bar(total: int, desc: str) -> Any:
        shown.set()
        return make_bar(total, desc)

    monkeypatch.setattr(_progress, "make_bar", bar)
    opener = threading.Thread(target=lambda: (shown.wait(30), gate.release(30)))
    opener.start()
    try:
        yield gate, shown
    finally:
        opener.join()


def read_fifo(path: str, timeout: float = 30.0) -> str:
    """What a task writes into the FIFO ``path`` (once it has); TimeoutError after
    ``timeout`` seconds without a writer, instead of waiting for ever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        deadline = time.monotonic() + timeout
        data = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"nothing was written into {path} in {timeout} s")
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if chunk:
                data += chunk
            elif data:  # (the writer wrote and closed)
                return data.decode()
            else:  # (no writer yet: EOF before any)
                time.sleep(0.02)
    finally:
        os.close(fd)


class Signal:
    """A named pipe through which a task reports its engine's pid, then hangs."""

    def __init__(self, folder: Path, name: str = "running"):
        self.path = str(folder / name)
        os.mkfifo(self.path)

    @property
    def code(self) -> str:
        return (f"import os, time\n"
                f"with open({self.path!r}, 'w') as f:\n"
                f"    f.write(str(os.getpid()))\n"
                f"time.sleep(120)\n")

    def hanger(self):
        """A function (sent by value) doing what :attr:`code` does."""
        path = self.path

        def report_and_hang(*args, **kwargs):
            import os
            import time

            with open(path, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(120)

        return report_and_hang

    def kill_engine(self) -> float:
        """Wait until the task runs, SIGKILL its engine; returns the time of the kill."""
        with open(self.path) as f:
            pid = int(f.read())
        os.kill(pid, signal.SIGKILL)
        return time.monotonic()


def killed_job_shows_as_lost_engines(system: str, kill: list[str]) -> str:
    """Start 2 engines as a job of the batch ``system`` (of this test's PLAIT_DIR),
    have the scheduler end the job (``kill + [job]``) while they run a task, and
    check what the user sees: the task fails with EngineError, the engines leave
    the client, nothing hangs.  The job's id (the cluster is stopped)."""
    import plait.parallel as ipp
    from plait.wire.errors import CompositeError

    cluster = ipp.Cluster(n=2, engines=system)
    try:
        rc = cluster.start_and_connect()
        [job] = {g.job for g in cluster._procs.engine_sets}
        ar = rc[:].apply_async(time.sleep, 60)
        ar.wait_for_send(10)
        subprocess.run([*kill, job], check=True, capture_output=True)
        try:
            ar.get(timeout=60)
        except CompositeError as exc:
            assert "EngineError" in str(exc)
        else:
            raise AssertionError("the tasks of a killed job did not fail")
        deadline = time.monotonic() + 30
        while rc.ids and time.monotonic() < deadline:
            time.sleep(0.05)  # the client hears of the engines leaving
        assert rc.ids == []
    finally:
        cluster.stop()
    return job


# Functions of this module (Gate.waiter) travel to engines by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
