"""The MPI launchers the tests run against, when installed: Open MPI's
``mpiexec`` and MPICH's ``mpiexec.mpich``."""

from __future__ import annotations

import shutil
import subprocess

import pytest

MPI_LAUNCHERS = [
    pytest.param("mpiexec", id="mpiexec",
                 marks=pytest.mark.skipif(shutil.which("mpiexec") is None,
                                          reason="no mpiexec on PATH (apt-get install "
                                                 "openmpi-bin)")),
    pytest.param("mpiexec.mpich", id="mpich",
                 marks=pytest.mark.skipif(shutil.which("mpiexec.mpich") is None,
                                          reason="MPICH's mpiexec.mpich is not installed "
                                                 "(apt-get install mpich)")),
]


def is_open_mpi(mpiexec: str) -> bool:
    """Whether ``mpiexec`` is Open MPI's (which needs --oversubscribe past the cores)."""
    out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
    return "Open MPI" in out.stdout + out.stderr or "OpenRTE" in out.stdout + out.stderr
