"""examples/mpi_exchange.py over real MPI jobs: engines that one ``mpiexec -n 4``
started pass numpy arrays round a ring and sum them with mpi4py, driven by the
client, which checks the result.

Each launcher (Open MPI's ``mpiexec``, MPICH's ``mpiexec.mpich``) is first asked
to run mpi4py in two plain ranks: the test runs when they see rank 0 and 1 of
size 2, and is skipped, quoting what happened, when they do not (mpi4py missing,
built for the other MPI, or not loading).  The example then runs as a user runs
it, in its own PLAIT_DIR, and the test checks what it prints and that it leaves
nothing running.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from plait.cluster.processes import signal_pids
from support import ROOT
from support.cluster import left_running, make_env
from support.mpi import MPI_LAUNCHERS, is_open_mpi

EXAMPLE = ROOT / "examples" / "mpi_exchange.py"

#: Run by each rank of the probe: rank 0 prints every rank's (rank, size), which it
#: gathered, and its MPI library.
PROBE = ("from mpi4py import MPI; c = MPI.COMM_WORLD; seen = c.gather((c.rank, c.size)); "
         "c.rank or print(seen, MPI.Get_library_version().splitlines()[0], flush=True)")

#: What the example prints after its first line, for 4 ranks: rank r holds
#: [4r, 4r+1, 4r+2, 4r+3] and receives rank r-1's.
EXCHANGED = [
    "ring: rank 0 got [12.0, 13.0, 14.0, 15.0] from rank 3",
    "ring: rank 1 got [0.0, 1.0, 2.0, 3.0] from rank 0",
    "ring: rank 2 got [4.0, 5.0, 6.0, 7.0] from rank 1",
    "ring: rank 3 got [8.0, 9.0, 10.0, 11.0] from rank 2",
    "allreduce: every rank has the sum [24.0, 28.0, 32.0, 36.0]",
    "wrote mpi_exchange.png",
    "the engines' arrays match numpy's here",
]


def sweep(folder: Path) -> list[int]:
    """Kill what still runs with ``PLAIT_DIR=folder`` after 5 s (only ours); their pids."""
    leftovers = left_running(folder)
    for pid in leftovers:
        signal_pids([pid], signal.SIGKILL)
    return leftovers


def wheel_on_mpich(folder: Path) -> dict[str, str]:
    """What the environment needs for the mpi4py wheel's MPICH build on Debian's
    MPICH, as examples/mpi_exchange.py tells users: its ``libmpi.so.12`` is
    Debian's ``libmpich.so.12``, linked under that name in ``folder``, and
    ``MPI4PY_MPIABI=mpich`` picks that build.  Empty when there is no such pair."""
    try:
        import mpi4py
    except ImportError:
        return {}
    if not list(Path(mpi4py.__file__).parent.glob("MPI.mpich.*.so")):
        return {}
    found = [p for p in (Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib"))
             if (p / "libmpich.so.12").exists()]
    if not found:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "libmpi.so.12"
    if not link.exists():
        link.symlink_to(found[0] / "libmpich.so.12")
    return {"LD_LIBRARY_PATH": str(folder), "MPI4PY_MPIABI": "mpich"}


def mpi4py_trouble(mpiexec: str, folder: Path, extra: dict[str, str] | None = None
                   ) -> str | None:
    """Why mpi4py cannot serve engines under ``mpiexec`` (None: it can), from a job
    of two ranks run in ``folder``'s PLAIT_DIR, so that :func:`sweep` finds them;
    ``extra``: more environment."""
    try:
        import mpi4py
    except ImportError as exc:
        return (f"mpi4py does not import in {sys.executable}: {exc} (python -m pip install "
                f"mpi4py; .ci/run installs it)")
    flags = ["--oversubscribe"] if is_open_mpi(mpiexec) else []
    command = [shutil.which(mpiexec) or mpiexec, *flags, "-n", "2", sys.executable, "-c", PROBE]
    env = make_env(folder)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **(extra or {}))
    try:
        out = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return f"mpi4py {mpi4py.__version__} ran no job of two ranks in 60 s under {mpiexec}"
    finally:
        sweep(folder)
    lines = out.stdout.splitlines()
    if out.returncode == 0 and len(lines) == 1 and lines[0].startswith("[(0, 2), (1, 2)] "):
        return None
    which = f"mpi4py {mpi4py.__version__} ({Path(mpi4py.__file__).parent})"
    if out.returncode == 0 and lines and all(line.startswith("[(0, 1)] ") for line in lines):
        library = " ".join(lines[0].split()[2:]).split(",")[0]  # after "[(0, 1)]"
        return (f"{which} uses {library}, not the MPI of {mpiexec}: under it each rank is "
                f"an MPI job of size 1 (examples/mpi_exchange.py says how to get one for it)")
    said = [line.strip() for line in (out.stdout + out.stderr).strip().splitlines()]
    raised = [line for line in said if re.match(r"[\w.]+(Error|Exception): ", line)]
    quoted = raised[-1] if raised else " | ".join(said[-3:]) or "no output"  # a rank's, or mpiexec's
    return f"{which} does not run two ranks under {mpiexec}: exit {out.returncode}, {quoted}"


@pytest.mark.parametrize("mpiexec", MPI_LAUNCHERS)
def test_mpi_engines_exchange_numpy_arrays_driven_by_the_client(tmp_path, mpiexec):
    extra: dict[str, str] = {}
    trouble = mpi4py_trouble(mpiexec, tmp_path / "probe")
    if trouble and not is_open_mpi(mpiexec):  # the wheel's MPICH build, as users are told
        extra = wheel_on_mpich(tmp_path / "libmpi")
        trouble = mpi4py_trouble(mpiexec, tmp_path / "probe", extra) if extra else trouble
    if trouble:
        pytest.skip(trouble)
    folder = tmp_path / "p"
    try:
        out = subprocess.run([sys.executable, str(EXAMPLE), "-n", "4", f"--mpiexec={mpiexec}",
                              f"--out={tmp_path / 'figures'}"],
                             env={**make_env(folder), **extra}, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=100)
    finally:
        leftovers = sweep(folder)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    first, *rest = out.stdout.splitlines()
    assert first.startswith(f"4 engines under {mpiexec}, mpi4py on ")
    assert first.endswith(": ranks [0, 1, 2, 3], size 4")
    assert ("Open MPI" in first) == is_open_mpi(mpiexec)  # the launcher's own MPI
    assert rest == EXCHANGED
    assert out.stderr == ""
    figure = (tmp_path / "figures" / "mpi_exchange.png").read_bytes()
    assert figure.startswith(b"\x89PNG") and len(figure) > 5000  # (drawn, not empty)
    assert leftovers == []  # the example stopped its cluster: controller, engines, mpiexec


def test_the_guide_shows_what_the_example_prints():
    guide = (ROOT / "docs" / "clusters.md").read_text()
    assert "python examples/mpi_exchange.py" in guide
    assert all(line in guide for line in EXCHANGED)
