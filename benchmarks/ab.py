"""A/B: this checkout's plait against another's, measured side by side.

On a shared machine figures move by tens of percent between runs, which
hides the few percent a change on a hot path may cost.  This script starts
one 2-engine cluster per side *at the same time* and alternates blocks of
calls between them (in alternating order), so that whatever else the
machine does falls on both sides alike.  The side started first tends to
run a few percent slower, so half of the blocks run with each side started
first.

    python benchmarks/ab.py /path/to/other/checkout/.venv/bin/python
    python benchmarks/ab.py OTHER_PYTHON --figures rtt:200:10,bulk:1:30

``OTHER_PYTHON`` is an interpreter whose ``import plait`` gives the other
checkout (its own virtualenv).  Figures (``name:calls per block:blocks``):
``rtt`` (``mec.execute('pass', targets=0)``), ``task`` (one no-op MapTask,
``run`` to result), ``rate`` (2000 no-op MapTasks, ``run`` then
``barrier``), ``bulk`` (push + pull of a 100 MB array), ``tmap`` and
``mmap`` (``tc.map`` and ``mec.map`` of ``x**10`` over ``range(10000)``), ``prtt``
(``rc[0].apply_sync(noop)``), ``prate`` (2000 ``lview.apply_async(noop)``, then
``rc.wait``) and ``pdag`` (the same, each task ``after=`` 3 random earlier ones).  Latencies print
their 10th percentile, median and 90th percentile; rates and bandwidths
their median.  Both clusters are stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DEFAULT = "rtt:200:10,task:200:10,rate:1:20,bulk:1:20,tmap:5:10,mmap:5:10"


def child() -> None:
    """One side: connect to the cluster of $PLAIT_DIR and run blocks on command."""
    import numpy as np

    import plait.parallel as ipp
    from plait.kernel import client

    mec = client.MultiEngineClient()
    tc = client.TaskClient()
    rc = ipp.Client()
    rc.wait_for_engines(2, timeout=60)
    direct, balanced = rc[0], rc.load_balanced_view()
    array = np.random.rand(100 * 1_000_000 // 8)

    def noop() -> None:
        return None

    def power(x: int) -> int:
        return x**10

    rng = random.Random(1)  # pdag: each task after 3 random earlier ones
    dag = [sorted(rng.sample(range(i), min(3, i))) for i in range(2000)]

    for _ in range(50):  # warm up
        mec.execute("pass", targets=0)
        tc.get_task_result(tc.run(client.MapTask(noop)), block=True)
        direct.apply_sync(noop)
    print("ready", flush=True)
    for line in sys.stdin:
        what, n = line.split()
        seconds = []
        for _ in range(int(n)):
            start = time.perf_counter()
            if what == "rtt":
                mec.execute("pass", targets=0)
            elif what == "task":
                tc.get_task_result(tc.run(client.MapTask(noop)), block=True)
            elif what == "rate":
                ids = [tc.run(client.MapTask(noop)) for _ in range(2000)]
                tc.barrier(ids)
            elif what == "bulk":
                mec.push({"a": array}, targets=0)
                mec.pull("a", targets=0)
            elif what == "tmap":
                tc.map(power, range(10000))
            elif what == "mmap":
                mec.map(power, range(10000))
            elif what == "prtt":
                direct.apply_sync(noop)
            elif what == "prate":
                rc.wait([balanced.apply_async(noop) for _ in range(2000)])
            elif what == "pdag":
                ars: list = []
                for deps in dag:
                    balanced.after = [ars[j] for j in deps] or None
                    ars.append(balanced.apply_async(noop))
                balanced.after = None
                rc.wait(ars)
            seconds.append(time.perf_counter() - start)
            if what == "rate":
                tc.clear(ids)
            elif what in ("prate", "pdag"):
                rc.purge_everything()
        print(json.dumps(seconds), flush=True)


def summary(what: str, seconds: list[float]) -> str:
    xs = sorted(seconds)
    k = len(xs)
    if what in ("rate", "prate", "pdag"):
        return f"median {statistics.median(2000 / x for x in xs):.0f} tasks/s (n={k})"
    if what == "bulk":
        return f"median {statistics.median(200 / x for x in xs):.0f} MB/s (n={k})"
    ms = [x * 1e3 for x in xs]
    return f"p10 {ms[k // 10]:.3f}  median {statistics.median(ms):.3f}  p90 {ms[9 * k // 10]:.3f} ms (n={k})"


@contextlib.contextmanager
def clusters(sides: dict[str, str]) -> Iterator[dict[str, subprocess.Popen]]:
    """A 2-engine cluster and a driver per side, started in order; all stopped at the end."""
    here = str(Path(__file__).resolve())
    procs: dict[str, subprocess.Popen] = {}
    envs: dict[str, dict] = {}
    try:
        for name, python in sides.items():
            env = dict(os.environ, PLAIT_DIR=tempfile.mkdtemp(prefix=f"plait-ab-{name}-"))
            envs[name] = env
            subprocess.run([python, "-m", "plait.scripts.ipcluster", "start", "-n", "2",
                            "--daemonize"], env=env, check=True, cwd="/",
                           stdout=subprocess.DEVNULL)
            procs[name] = subprocess.Popen([python, here, "--child"], env=env, cwd="/",
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           text=True)
            if procs[name].stdout.readline().strip() != "ready":
                raise SystemExit(f"the {name} side did not start")
        yield procs
    finally:
        for proc in procs.values():
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=60)
        for name, env in envs.items():
            subprocess.run([sides[name], "-m", "plait.scripts.ipcluster", "stop"], env=env,
                           cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("other", nargs="?", help="the Python interpreter of the other checkout")
    p.add_argument("--figures", default=DEFAULT, help=f"name:calls:blocks,... (default {DEFAULT})")
    p.add_argument("--child", action="store_true", help="(internal) run one side")
    args = p.parse_args()
    if args.child:
        child()
        return 0
    if not args.other:
        p.error("give the Python interpreter of the other checkout")
    plan = [(name, int(n), int(blocks)) for name, n, blocks in
            (f.split(":") for f in args.figures.split(","))]
    sides = {"this": sys.executable, "other": args.other}
    seconds: dict[tuple[str, str], list[float]] = {}
    print(f"A/B on {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}: "
          f"this = {sys.executable}, other = {args.other}")
    # The side started first runs a few percent slower on a small machine: each
    # half of the blocks runs with the clusters started in one order.
    for first in ("this", "other"):
        order = [first, "other" if first == "this" else "this"]
        with clusters({name: sides[name] for name in order}) as procs:
            for what, n, blocks in plan:
                for block in range(blocks // 2 + (blocks % 2 if first == "this" else 0)):
                    for name in (order if block % 2 == 0 else reversed(order)):
                        proc = procs[name]
                        proc.stdin.write(f"{what} {n}\n")
                        proc.stdin.flush()
                        seconds.setdefault((what, name), []).extend(
                            json.loads(proc.stdout.readline()))
    for what, _, _ in plan:
        print(f"{what:5} this:  {summary(what, seconds[(what, 'this')])}")
        print(f"{'':5} other: {summary(what, seconds[(what, 'other')])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
