"""Engines started by an MPI launcher, as the overview describes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from support.cluster import Cluster, make_env, wait_for_engines

MPIRUN = shutil.which("mpirun")


@pytest.mark.skipif(MPIRUN is None, reason="mpirun (Open MPI) is not installed")
def test_mpirun_starts_engines(tmp_path):
    env = make_env(tmp_path / "p")
    c = Cluster(tmp_path / "p", env, 0)
    ctl = subprocess.Popen(
        [sys.executable, "-m", "plait.scripts.ipcontroller"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    mpi = None
    try:
        assert "ready" in ctl.stdout.readline()
        flags = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
        mpi = subprocess.Popen([MPIRUN, *flags, "-n", "3", sys.executable, "-m",
                                "plait.scripts.ipengine"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        mec = c.mec()
        assert wait_for_engines(mec, 3) == [0, 1, 2]
        mec.execute("import os; rank = int(os.environ['OMPI_COMM_WORLD_RANK'])")
        assert sorted(mec.pull("rank")) == [0, 1, 2]
    finally:
        ctl.kill()
        ctl.wait()
        if mpi is not None:
            mpi.wait(30)  # engines exit once their controller is gone
