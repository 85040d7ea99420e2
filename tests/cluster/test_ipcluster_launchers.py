"""``ipcluster`` from the command line: ``--engines=mpi``, ``engines``, ``list``,
and the profile's ``cluster.toml``.

Real processes in a fresh PLAIT_DIR per test.  Every process a test starts
carries that PLAIT_DIR in its environment, which is how the teardown (and
the "nothing left running" checks) find them, whatever went wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import plait.parallel as ipp
from plait.cluster.processes import pid_alive, signal_pids
from support.cluster import left_running, make_env, run_cmd
from support.mpi import MPI_LAUNCHERS, is_open_mpi


# -- helpers --------------------------------------------------------------------------------
class Profiles:
    """A PLAIT_DIR and its environment, to run ``ipcluster`` in."""

    def __init__(self, root: Path):
        self.root = root
        self.env = make_env(root)

    def folder(self, profile: str = "default") -> Path:
        return self.root / f"profile_{profile}"

    def state(self, profile: str = "default") -> dict:
        return json.loads((self.folder(profile) / "run" / "ipcluster.json").read_text())

    def has_state(self, profile: str = "default") -> bool:
        return (self.folder(profile) / "run" / "ipcluster.json").exists()

    def write_toml(self, text: str, profile: str = "default") -> Path:
        self.folder(profile).mkdir(parents=True, exist_ok=True)
        path = self.folder(profile) / "cluster.toml"
        path.write_text(text)
        return path

    def ipcluster(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cmd(["ipcluster", *args], self.env, check=check)

    def listed(self) -> dict[str, list[str]]:
        """``ipcluster list``, by profile: [controller pid, engines, launcher]."""
        lines = self.ipcluster("list").stdout.splitlines()
        if lines == ["no cluster is running"]:
            return {}
        assert lines[0].split() == ["profile", "controller", "engines", "launcher"]
        return {fields[0]: fields[1:] for fields in (line.split() for line in lines[1:])}

    def client(self, profile: str = "default"):
        path = self.folder(profile) / "security" / "ipcontroller-client.furl"
        return ipp.Client(str(path))


@pytest.fixture
def plait(tmp_path: Path) -> Iterator[Profiles]:
    """A fresh PLAIT_DIR.  At teardown every cluster of it is stopped, whatever
    still runs from it is killed, and the test errors if anything did."""
    profiles = Profiles(tmp_path / "p")
    yield profiles
    for state in profiles.root.glob("profile_*/run/ipcluster.json"):
        name = state.parent.parent.name[len("profile_"):]
        profiles.ipcluster("stop", f"--profile={name}", check=False)
    leftovers = left_running(profiles.root)
    for pid in leftovers:
        signal_pids([pid], signal.SIGKILL)
    assert not leftovers, f"processes left running: {leftovers}"


def all_pids(state: dict) -> list[int]:
    """The controller, every engine and every mpiexec a state file records."""
    launchers = [g["launcher_pid"] for g in state["engine_sets"] if "launcher_pid" in g]
    return [state["controller"], *state["engines"], *launchers]


# -- --engines=mpi, then ipcluster engines ------------------------------------------------------


@pytest.mark.parametrize("mpiexec", MPI_LAUNCHERS)
def test_mpi_engines_start_grow_and_stop(plait, mpiexec):
    flags = [f"--mpiexec={mpiexec}"]
    if is_open_mpi(mpiexec):
        flags.append("--mpi-args=--oversubscribe")  # more ranks than this host's cores
    out = plait.ipcluster("start", "-n", "2", "--engines=mpi", *flags, "--daemonize",
                          "--timeout", "60").stdout
    assert "plait cluster ready: controller and 2 engines [0, 1]" in out
    controller = plait.state()["controller"]
    assert plait.listed() == {"default": [str(controller), "2", "mpi"]}

    out = plait.ipcluster("engines", "-n", "2", "--timeout", "60").stdout
    assert "added 2 engines [2, 3] to the cluster of profile 'default'" in out
    assert plait.listed() == {"default": [str(controller), "4", "mpi"]}
    state = plait.state()  # the cluster's launcher, not the default (local)
    assert [g["launcher"] for g in state["engine_sets"]] == ["mpi", "mpi"]
    with plait.client() as rc:
        rc.wait_for_engines(4, timeout=30)
        assert rc.ids == [0, 1, 2, 3]
        # two mpiexec jobs of two ranks each
        assert sorted(rc[:].pull("rank", block=True)) == [0, 0, 1, 1]
        assert rc[:].pull("size", block=True) == [2, 2, 2, 2]
    pids = all_pids(state)
    assert len(pids) == 7 and all(pid_alive(pid) for pid in pids)

    assert "plait cluster stopped" in plait.ipcluster("stop").stdout
    assert not [pid for pid in pids if pid_alive(pid)]
    assert not plait.has_state()
    assert plait.listed() == {}
    assert left_running(plait.root) == []  # nor any helper of mpiexec


def test_a_missing_mpiexec_fails_the_start_and_leaves_nothing(plait):
    out = plait.ipcluster("start", "-n", "2", "--engines=mpi", "--mpiexec=no-such-mpiexec",
                          "--daemonize", check=False)
    assert out.returncode == 1
    assert "'no-such-mpiexec' is not found" in out.stderr
    assert not plait.has_state()
    assert left_running(plait.root) == []


def test_ipcluster_engines_adds_local_engines(plait):
    plait.ipcluster("start", "-n", "1", "--daemonize", "--timeout", "60")
    out = plait.ipcluster("engines", "-n", "2", "--timeout", "60").stdout
    assert "added 2 engines [1, 2]" in out
    assert plait.listed()["default"][1:] == ["3", "local"]
    with plait.client() as rc:
        rc.wait_for_engines(3, timeout=30)
        assert len(set(rc[:].apply_sync(os.getpid))) == 3
    pids = all_pids(plait.state())
    plait.ipcluster("stop")
    assert not [pid for pid in pids if pid_alive(pid)]


def test_ipcluster_engines_without_a_cluster_says_so(plait):
    out = plait.ipcluster("engines", "-n", "1", check=False)
    assert out.returncode == 1
    assert "no cluster is running for profile 'default'" in out.stderr
    assert left_running(plait.root) == []


# -- cluster.toml --------------------------------------------------------------------------------
def test_cluster_toml_gives_the_engine_count(plait):
    plait.write_toml("[cluster]\nn = 3\n", "lab")
    out = plait.ipcluster("start", "--daemonize", "--profile=lab").stdout
    assert "controller and 3 engines [0, 1, 2]" in out
    assert plait.listed()["lab"][1:] == ["3", "local"]
    with plait.client("lab") as rc:
        assert rc.ids == [0, 1, 2]
    pids = all_pids(plait.state("lab"))
    assert "plait cluster stopped" in plait.ipcluster("stop", "--profile=lab").stdout
    assert not [pid for pid in pids if pid_alive(pid)]
    assert not plait.has_state("lab")


def test_the_n_flag_overrides_cluster_toml(plait):
    plait.write_toml("[cluster]\nn = 3\n", "lab")
    out = plait.ipcluster("start", "-n", "1", "--daemonize", "--profile=lab").stdout
    assert "controller and 1 engines [0]" in out
    assert plait.listed()["lab"][1:] == ["1", "local"]
    plait.ipcluster("stop", "--profile=lab")
    assert left_running(plait.root) == []


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec on PATH")
def test_cluster_toml_chooses_mpi_engines_and_their_arguments(plait):
    args = '["--oversubscribe"]' if is_open_mpi("mpiexec") else "[]"
    plait.write_toml(f'[cluster]\nn = 3\nengines = "mpi"\n\n[mpi]\nargs = {args}\n', "lab")
    out = plait.ipcluster("start", "--daemonize", "--profile=lab").stdout
    assert "controller and 3 engines [0, 1, 2]" in out
    assert plait.listed()["lab"][1:] == ["3", "mpi"]
    with plait.client("lab") as rc:
        assert sorted(rc[:].pull("rank", block=True)) == [0, 1, 2]
    plait.ipcluster("stop", "--profile=lab")
    assert left_running(plait.root) == []


@pytest.mark.parametrize("text, complaint", [
    ("[cluster]\nengine = 'mpi'\n", "unknown key [cluster] engine"),
    ("[cluster]\nn = 0\n", "[cluster] n must be an int >= 1, not 0"),
    ("[clusters]\nn = 2\n", "unknown section [clusters]"),
    ("[cluster\nn = 2\n", "not valid TOML"),
], ids=["key", "value", "section", "syntax"])
def test_a_bad_cluster_toml_names_the_file_and_key_and_starts_nothing(plait, text,
                                                                      complaint):
    path = plait.write_toml(text, "lab")
    out = plait.ipcluster("start", "--daemonize", "--profile=lab", check=False)
    assert out.returncode != 0
    assert str(path) in out.stderr
    assert complaint in out.stderr
    assert "Traceback" not in out.stderr
    assert not plait.has_state("lab")
    assert left_running(plait.root) == []
    assert not list((plait.folder("lab") / "log").glob("ipcontroller-*.log"))
