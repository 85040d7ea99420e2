"""Fixtures that start real plait clusters as processes.

Every cluster lives in a temporary ``PLAIT_DIR`` and listens on ephemeral
ports of 127.0.0.1; each process is killed at teardown even when a test
fails.  Readiness is event-driven: ``ipcluster start --daemonize`` returns
only when every engine is registered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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
        for pid in [*state.get("engines", []), state.get("controller")]:
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def mec(self, **kw):
        from plait.kernel import client

        return client.MultiEngineClient(self.furl_file("mec"), **kw)

    def tc(self, **kw):
        from plait.kernel import client

        return client.TaskClient(self.furl_file("tc"), **kw)


def make_env(plait_dir: Path) -> dict:
    env = dict(os.environ)
    env["PLAIT_DIR"] = str(plait_dir)
    env.pop("PYTHONSTARTUP", None)
    return env


@pytest.fixture
def plait_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A fresh PLAIT_DIR for this test, set for this process and children."""
    monkeypatch.setenv("PLAIT_DIR", str(tmp_path / "plait"))
    return make_env(tmp_path / "plait")


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator:
    """Start daemonized clusters in fresh PLAIT_DIRs; all stopped at teardown."""
    started: list[Cluster] = []

    def make(n: int = 2, extra: list[str] | None = None) -> Cluster:
        d = tmp_path / f"plait{len(started)}"
        c = Cluster(d, make_env(d), n, extra=list(extra or []))
        started.append(c)
        c.start()
        return c

    yield make
    for c in started:
        c.stop()


@pytest.fixture(scope="module")
def cluster4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 4-engine cluster shared by the tests of one module."""
    d = tmp_path_factory.mktemp("plait4")
    c = Cluster(d, make_env(d), 4)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def mec(cluster4: Cluster):
    """A MultiEngineClient on the shared cluster, engines reset before the test."""
    client = cluster4.mec()
    client.reset()
    return client


@pytest.fixture
def ipython_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh IPython shell (in-memory history, its own IPYTHONDIR, no colours).

    At teardown the parallel magics are switched off and forgotten.
    """
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    from plait.kernel.client import _magics

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.chdir(tmp_path)
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance(config=config)
    shell.colors = "nocolor"
    yield shell
    magics = getattr(shell, "_plait_magics", None)
    if magics is not None and magics.autopx_enabled:
        magics.disable_autopx()
    _magics._active = None
    InteractiveShell.clear_instance()
