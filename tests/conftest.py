"""Fixtures that start real plait clusters as processes (see ``support.cluster``).

Each process is killed at teardown even when a test fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cluster import Cluster, make_env


@pytest.fixture
def plait_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A fresh PLAIT_DIR for this test, set for this process and children."""
    monkeypatch.setenv("PLAIT_DIR", str(tmp_path / "plait"))
    return make_env(tmp_path / "plait")


@pytest.fixture
def plait_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh PLAIT_DIR for this test (``tmp_path / "p"``), set for this process
    and its children (a test module may define its own, stricter one)."""
    monkeypatch.setenv("PLAIT_DIR", str(tmp_path / "p"))
    return tmp_path / "p"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Three network-namespace hosts with sshd each (see ``support.netns``), for the
    tests of one module; its ``pytestmark`` skips it where they cannot be made."""
    from support.netns import Hosts

    with Hosts(3, tmp_path_factory.mktemp("hosts")) as made:
        yield made


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
    _magics._owners.clear()  # what %px{suffix} ran on, of both generations
    InteractiveShell.clear_instance()
