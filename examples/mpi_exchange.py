"""Engines started by MPI pass numpy arrays to each other with mpi4py, driven from here.

Run it with the Python that has plait installed::

    python examples/mpi_exchange.py                            # 4 engines, Open MPI's mpiexec
    python examples/mpi_exchange.py -n 3 --mpiexec=mpiexec.mpich

It starts a local cluster whose engines are one ``mpiexec -n 4`` job
(``plait.parallel.Cluster(n=4, engines="mpi")``, what ``ipcluster start -n 4
--engines=mpi`` starts), and then, from this client:

1. runs ``from mpi4py import MPI; comm = MPI.COMM_WORLD`` on every engine
   (``rc[:].execute``, which ``%px`` calls in IPython) and checks that mpi4py's
   rank and size of each engine are those plait read from ``mpiexec``;
2. pushes one array to each rank, and has every rank send its array to the next
   rank round a ring while receiving the previous rank's (``comm.Sendrecv``, in a
   function called on every engine with ``rc[:].apply``);
3. sums the arrays over the ranks (``comm.Allreduce``, with ``execute`` again) and
   pulls every rank's sum;

printing what the engines got and checking it against numpy here, and drawing
it: ``mpi_exchange.png`` in ``--out`` (each rank's array before the ring, after
it, and the sum).  It exits 0 when every check holds and 1, saying what went
wrong, otherwise; the cluster is stopped either way.

What it needs:

* numpy, and an MPI launcher: Open MPI's ``mpiexec`` (Debian: ``apt-get install
  openmpi-bin``) or MPICH's (``mpiexec.mpich``);
* mpi4py for this Python (the engines run the same interpreter), working with that
  same MPI.  On Debian or Ubuntu with Open MPI::

      apt-get install libopenmpi-dev
      python -m pip install mpi4py

  The mpi4py wheel holds one build for Open MPI and one for MPICH, and loads the one
  matching the library that ``libmpi.so`` is; libopenmpi-dev makes that Open MPI's
  (Debian ranks its ``libmpi.so`` above MPICH's).  The wheel's MPICH build wants
  ``libmpi.so.12``, which Debian's MPICH names ``libmpich.so.12``.  For MPICH, give
  it that name and pick that build::

      mkdir -p ~/.mpich-abi
      ln -s /usr/lib/x86_64-linux-gnu/libmpich.so.12 ~/.mpich-abi/libmpi.so.12
      LD_LIBRARY_PATH=~/.mpich-abi MPI4PY_MPIABI=mpich \
          python examples/mpi_exchange.py -n 3 --mpiexec=mpiexec.mpich

  (the engines inherit the environment), or build mpi4py from source
  (``MPICC=mpicc.mpich python -m pip install --no-binary=mpi4py mpi4py``, about 4
  minutes on 2 cores).

An mpi4py built for another MPI than the launcher's starts every engine as an MPI
job of its own, of size 1: the script says so rather than exchange anything.

Every engine of the job must take part in a collective call (``Allreduce``,
``Sendrecv`` round the ring), so such calls go to all the job's engines at once, as
``rc[:]`` does; ``STEP_TIMEOUT`` bounds each step in case one never returns.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

import plait.parallel as ipp
from plait.wire.errors import ClusterError

#: Seconds one step may take on the engines.
STEP_TIMEOUT = 60.0

#: Each rank's array is one row: 4 numbers.
WIDTH = 4

#: Run on every engine first, as ``%px`` would: mpi4py's import starts MPI there.
SETUP = """\
from mpi4py import MPI
import numpy as np
comm = MPI.COMM_WORLD
"""

#: The sum over every rank of its ``block``, left on each rank as ``total``.
ALLREDUCE = """\
total = np.empty_like(block)
comm.Allreduce(block, total, op=MPI.SUM)
"""


def mpi_place() -> tuple[int, int, str]:
    """On an engine: its rank and size as mpi4py sees them, and the MPI library's name."""
    from mpi4py import MPI

    first = " ".join(MPI.Get_library_version().splitlines()[0].split())
    return MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size(), first.split(",")[0]


def ring_shift(block: np.ndarray) -> np.ndarray:
    """On an engine: send ``block`` to the next rank, return what the previous one sent."""
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    got = np.empty_like(block)
    comm.Sendrecv(block, dest=(comm.rank + 1) % comm.size, recvbuf=got,
                  source=(comm.rank - 1) % comm.size)
    return got


def mpi_args_for(mpiexec: str) -> list[str]:
    """Open MPI starts no more ranks than the host has cores unless told to (its
    ``mpiexec --version`` says "Open MPI", or "OpenRTE" up to version 4)."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []  # the Cluster says what is wrong with this launcher
    said = out.stdout + out.stderr
    return ["--oversubscribe"] if "Open MPI" in said or "OpenRTE" in said else []


def plot(panels: list[tuple[str, np.ndarray]], out: Path) -> Path:
    """Each panel an array per rank (one row each), its numbers written in its cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3))
    for ax, (title, rows) in zip(axes, panels, strict=True):
        ax.imshow(rows, cmap="viridis", aspect="auto")
        for (r, c), value in np.ndenumerate(rows):
            ax.text(c, r, f"{value:g}", ha="center", va="center", color="white", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_yticks(range(rows.shape[0]))
        ax.set_ylabel("rank")
        ax.set_xticks([])
    fig.tight_layout()
    path = out / "mpi_exchange.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def exchange(rc: ipp.Client, n: int, mpiexec: str, out: Path | None = None) -> list[str]:
    """Drive the engines through the three steps; what went wrong (empty: nothing).
    With ``out``, the figure of what each rank held goes there."""
    dview = rc[:]
    dview.block = True
    try:
        dview.execute(SETUP, block=False).get(STEP_TIMEOUT)
    except Exception as exc:
        return [f"mpi4py does not start on the engines: {exc}"]

    # plait's rank of each engine (read from mpiexec's variables), and mpi4py's
    ranks = dview.pull("rank")
    places = dview.apply_async(mpi_place).get(STEP_TIMEOUT)
    library = places[0][2]
    sizes = sorted({size for _, size, _ in places})
    size = sizes[0] if len(sizes) == 1 else sizes
    print(f"{n} engines under {mpiexec}, mpi4py on {library}: "
          f"ranks {sorted(ranks)}, size {size}")
    if sizes != [n]:
        return [f"mpi4py's COMM_WORLD has size {size} on the engines, not {n}: this mpi4py "
                f"uses {library}, not the MPI of {mpiexec}"]
    if sorted(ranks) != list(range(n)) or [r for r, _, _ in places] != ranks:
        return [f"the ranks do not agree: plait read {ranks}, mpi4py says "
                f"{[r for r, _, _ in places]}"]
    engine_of = dict(zip(ranks, rc.ids, strict=True))

    # rank r holds row r of `blocks`, pushed to its engine
    blocks = np.arange(n * WIDTH, dtype=np.float64).reshape(n, WIDTH)
    for r in range(n):
        rc[engine_of[r]].push({"block": blocks[r]}, block=True)

    problems = []
    got = dview.apply_async(ring_shift, ipp.Reference("block")).get(STEP_TIMEOUT)
    for r in range(n):
        received = got[ranks.index(r)]
        print(f"ring: rank {r} got {received.tolist()} from rank {(r - 1) % n}")
        if not np.array_equal(received, blocks[(r - 1) % n]):
            problems.append(f"rank {r} got {received.tolist()}, not rank {(r - 1) % n}'s "
                            f"{blocks[(r - 1) % n].tolist()}")

    dview.execute(ALLREDUCE, block=False).get(STEP_TIMEOUT)
    totals = dview.pull("total")
    expected = blocks.sum(axis=0)
    if all(np.array_equal(total, expected) for total in totals):
        print(f"allreduce: every rank has the sum {totals[0].tolist()}")
    else:
        problems.append(f"allreduce: the ranks have {[t.tolist() for t in totals]}, "
                        f"not {expected.tolist()} each")
    if out is not None and not problems:
        by_rank = [ranks.index(r) for r in range(n)]
        path = plot([("each rank's array", blocks),
                     ("after the ring (Sendrecv)", np.array([got[i] for i in by_rank])),
                     ("the sum (Allreduce)", np.array([totals[i] for i in by_rank]))], out)
        print(f"wrote {path.name}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=4, help="how many engines (MPI ranks)")
    parser.add_argument("--mpiexec", default="mpiexec", help="the MPI launcher")
    parser.add_argument("--out", type=Path, default=Path("."), help="where the PNG goes")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("mpi4py") is None:
        print(f"error: mpi4py is not installed for {sys.executable} "
              f"(python -m pip install mpi4py)", file=sys.stderr)
        return 1
    try:
        cluster = ipp.Cluster(n=args.n, engines="mpi", mpiexec=args.mpiexec,
                              mpi_args=mpi_args_for(args.mpiexec))
        rc = cluster.start_and_connect()
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        problems = exchange(rc, args.n, args.mpiexec, args.out)
    except TimeoutError as exc:  # a step's .get(STEP_TIMEOUT)
        problems = [f"{exc}: did a rank never join the collective call?"]
    finally:
        cluster.stop()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print("the engines' arrays match numpy's here")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
