"""What the benchmark modules share: results, child processes, clean-up, plait clusters.

Every measurement that starts a cluster runs in a child process of its own
(``run_child``).  The child, and every process it starts (controllers,
engines, workers, even those that detach into a session of their own), inherit
the environment variable ``PLAIT_BENCH_TOKEN`` with a value unique to that
child; once the child has ended, :func:`kill_token` finds any process still
carrying the token in ``/proc/PID/environ`` and kills it by its pid.  A section
that stops its clusters properly leaves nothing to find, so a non-zero count
there is itself a finding.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from plait.scripts.ipcluster import pid_alive

TOKEN_VAR = "PLAIT_BENCH_TOKEN"
MB = 1_000_000
HERE = Path(__file__).resolve().parent


# -- results -------------------------------------------------------------------------------


class Results:
    """Figures measured in one process: ``{key: {"value": v, ...}}`` plus errors and skips.

    :meth:`measure` runs one measurement and records an exception as that
    figure's error instead of letting it end the section.
    """

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, Any]] = {}

    def add(self, key: str, value: float, **extra: Any) -> None:
        self.figures[key] = {"value": value, **extra}

    def skip(self, key: str, why: str) -> None:
        self.figures[key] = {"skip": why}

    def error(self, key: str, why: str) -> None:
        self.figures[key] = {"error": why}

    def measure(self, keys: str | list[str], fn: Callable[[], Any]) -> Any:
        keys = [keys] if isinstance(keys, str) else keys
        try:
            return fn()
        except Exception as exc:  # a failed measurement is a result, not a crash
            why = f"{type(exc).__name__}: {exc}".strip()
            for key in keys:
                if key not in self.figures:
                    self.error(key, why.splitlines()[0][:300] if why else "failed")
            sys.stderr.write(f"[{keys[0]}] failed:\n{traceback.format_exc()}\n")
            return None

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.figures, indent=1))


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rng_array(nbytes: int, seed: int = 0) -> Any:
    """A float64 numpy array of ``nbytes`` bytes with random contents."""
    import numpy as np

    return np.random.default_rng(seed).random(nbytes // 8)


# -- stray processes ---------------------------------------------------------------------------


def pids_with_token(token: str) -> list[int]:
    """Pids of live processes (other than this one) whose environment holds ``token``."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:  # gone, a zombie, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:100]


def kill_token(token: str) -> list[int]:
    """SIGKILL every process that carries ``token``; returns their pids."""
    pids = pids_with_token(token)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


# -- child processes -------------------------------------------------------------------------


def run_child(args: list[str], timeout: float, label: str, grace: float = 0.0,
              verbose: bool = False) -> tuple[dict | None, str]:
    """Run ``python ARGS --out FILE`` in a new session with a fresh token.

    Returns ``(figures or None, note)``.  The child's stderr is kept and its
    end quoted in ``note`` when the child fails (or passed through with
    ``verbose``).  On timeout the child's process group is killed.  In every
    case, processes still carrying the token ``grace`` seconds after the
    child ended are killed and named in ``note``.
    """
    token = uuid.uuid4().hex
    env = dict(os.environ, **{TOKEN_VAR: token})
    env.pop("PYTHONSTARTUP", None)
    notes = []
    with tempfile.TemporaryDirectory(prefix="plait-bench-out-") as tmp:
        out = Path(tmp) / "figures.json"
        with open(Path(tmp) / "stderr.txt", "w+b") as err:
            proc = subprocess.Popen([sys.executable, *args, "--out", str(out)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=None if verbose else err, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
                if proc.returncode != 0:
                    err.seek(0)
                    tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
                    notes.append(f"{label}: the child exited with {proc.returncode}"
                                 + (": " + " | ".join(tail) if tail else ""))
            except subprocess.TimeoutExpired:
                notes.append(f"{label}: timed out after {timeout:g} s and was killed")
            finally:
                if proc.poll() is None:
                    _end_group(proc)
                deadline = time.monotonic() + grace
                while pids_with_token(token) and time.monotonic() < deadline:
                    time.sleep(0.2)
                names = {pid: _cmdline(pid) for pid in pids_with_token(token)}
                strays = kill_token(token)
                if strays:
                    what = ", ".join(f"{pid} ({names.get(pid, '?')})" for pid in strays)
                    notes.append(f"{label}: killed {len(strays)} process(es) still running "
                                 f"{grace:g} s after it ended: {what}")
        figures = json.loads(out.read_text()) if out.exists() else None
    return figures, "; ".join(notes)


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM the child's process group (the child then stops its clusters), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(f"ended by signal {signum}")


def child_main(run: Callable[[dict, Results], None]) -> None:
    """Entry point of a child: ``--params JSON --out FILE``; writes what was measured."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("what")
    p.add_argument("--params", default="{}")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    # On SIGTERM (timeout, Ctrl-C in run.py) unwind, so that finally blocks stop clusters.
    signal.signal(signal.SIGTERM, _terminated)
    results = Results()
    params = dict(json.loads(a.params), what=a.what)
    try:
        run(params, results)
    except BaseException as exc:
        results.error("_section", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        raise
    finally:
        results.write(a.out)


# -- plait clusters ---------------------------------------------------------------------------


def ipcluster_command() -> tuple[list[str], str]:
    """The ``ipcluster`` users run (beside this Python), if it is plait's.

    Installing ipyparallel into the same environment replaces the
    ``ipcluster`` script with its own; then ``python -m plait.scripts.ipcluster``
    is used instead and the note says so.
    """
    script = Path(sys.executable).parent / "ipcluster"
    try:
        text = script.read_text(errors="replace")
    except OSError:
        text = ""
    if "plait" in text:
        return [str(script)], ""
    note = (f"{script} is not plait's ipcluster (it is {'missing' if not text else 'another'} "
            f"script); using 'python -m plait.scripts.ipcluster'")
    return [sys.executable, "-m", "plait.scripts.ipcluster"], note


class PlaitCluster:
    """A daemonized plait cluster in a temporary PLAIT_DIR, started with ``ipcluster``."""

    def __init__(self, n: int):
        self.n = n
        self._tmp = tempfile.TemporaryDirectory(prefix="plait-bench-")
        self.plait_dir = Path(self._tmp.name)
        self.env = dict(os.environ, PLAIT_DIR=str(self.plait_dir))
        self.command, self.note = ipcluster_command()
        self.running = False

    def furl(self, name: str) -> str:
        return str(self.plait_dir / "profile_default" / "security" / f"ipcontroller-{name}.furl")

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self.command, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self) -> float:
        """Seconds from running ``ipcluster start -n N --daemonize`` to its return (ready)."""
        t0 = time.perf_counter()
        proc = self._run("start", "-n", str(self.n), "--daemonize", "--timeout", "60")
        elapsed = time.perf_counter() - t0
        self.running = True  # even a failed start may have left a state file
        if proc.returncode != 0:
            self.stop(check=False)
            raise RuntimeError(f"ipcluster start failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        return elapsed

    def stop(self, check: bool = True) -> float:
        """Seconds ``ipcluster stop`` takes; kills what the state file names afterwards."""
        if not self.running:
            return 0.0
        self.running = False
        state = self.plait_dir / "profile_default" / "run" / "ipcluster.json"
        try:
            pids = json.loads(state.read_text())
        except (OSError, ValueError):
            pids = {}
        t0 = time.perf_counter()
        proc = self._run("stop")
        elapsed = time.perf_counter() - t0
        left = [p for p in [*pids.get("engines", []), pids.get("controller")] if p and pid_alive(p)]
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if check and proc.returncode != 0:
            raise RuntimeError(f"ipcluster stop failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        if check and left:
            raise RuntimeError(f"ipcluster stop returned but left processes {left} running")
        return elapsed

    def close(self) -> None:
        try:
            self.stop(check=False)
        finally:
            self._tmp.cleanup()


@contextmanager
def plait_cluster(n: int) -> Iterator[PlaitCluster]:
    """A started cluster of ``n`` engines, stopped (and its folder removed) on exit."""
    cluster = PlaitCluster(n)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
