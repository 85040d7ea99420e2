"""The Task interface's figures: throughput, latency, map time and load balance.

Starts a cluster (``ipcluster start -n ENGINES --daemonize``) in a temporary
PLAIT_DIR for each scheduler setting, measures, and stops it.  Usage::

    python benchmarks/task_bench.py                # targets, default scheduler, 2 engines
    python benchmarks/task_bench.py --compare      # a table over schemes and hwm values
    python benchmarks/task_bench.py --scheme lru --hwm 1 --engines 4

Figures (medians):

``latency``   one no-op MapTask: ``tc.run`` then ``tc.get_task_result(id, block=True)``
``rate``      N no-op MapTasks submitted one by one with ``tc.run``, then ``tc.barrier``
``map``       ``tc.map(lambda x: x**10, range(10000))``
``map_uneven`` ``tc.map`` of sleeps: 8 of 0.1 s then 24 of 0.01 s; makespan / ideal
              (ideal = total / engines; a static split into contiguous blocks gives 1.69)
``tasks_alternating`` 32 sleeping MapTasks submitted one by one, then barrier:
              0.05 s and 0.005 s in turn (handing them out in turn, or all at once,
              puts every long one on the same engine: 1.8); makespan / ideal
``tasks_random`` 64 sleeping MapTasks of seeded random lengths (0.001 to 0.2 s, long
              tail) submitted one by one, then barrier; makespan / ideal
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

TARGETS = {"latency": ("<=", 1.5), "rate": (">=", 3000), "map": ("<=", 0.5)}
UNEVEN = [0.1] * 8 + [0.01] * 24


def noop():
    return None


def power10(x):
    return x**10


def sleep_for(seconds):
    import time

    time.sleep(seconds)
    return seconds


def random_lengths(n: int = 64, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [min(0.2, max(0.001, rng.lognormvariate(-4.5, 1.2))) for _ in range(n)]


@contextmanager
def cluster(engines: int, scheme: str | None, hwm: int | None):
    """A daemonized cluster in a temporary PLAIT_DIR; yields its TaskClient."""
    with tempfile.TemporaryDirectory(prefix="plait-task-bench-") as folder:
        env = dict(os.environ, PLAIT_DIR=folder)
        args = [sys.executable, "-m", "plait.scripts.ipcluster", "start", "-n", str(engines),
                "--daemonize", "--timeout", "60"]
        if scheme:
            args.append(f"--scheme={scheme}")
        if hwm is not None:
            args.append(f"--hwm={hwm}")
        subprocess.run(args, env=env, check=True, capture_output=True, text=True)
        try:
            os.environ["PLAIT_DIR"] = folder
            from plait.kernel import client

            yield client.TaskClient(profile="default")
        finally:
            subprocess.run([sys.executable, "-m", "plait.scripts.ipcluster", "stop"],
                           env=env, capture_output=True)


def latency(tc, count: int) -> float:
    from plait.kernel import client

    task = client.MapTask(noop)
    times = []
    for i in range(count + 20):
        t0 = time.perf_counter()
        tc.get_task_result(tc.run(task), block=True)
        if i >= 20:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def rate(tc, n: int, rounds: int) -> float:
    from plait.kernel import client

    tc.barrier([tc.run(client.MapTask(noop)) for _ in range(50)])
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        ids = [tc.run(client.MapTask(noop)) for _ in range(n)]
        tc.barrier(ids)
        rates.append(n / (time.perf_counter() - t0))
        tc.clear()
    return statistics.median(rates)


def map_time(tc, n: int, rounds: int) -> float:
    want = [power10(x) for x in range(n)]
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        got = tc.map(power10, range(n))
        times.append(time.perf_counter() - t0)
        assert got == want
    return statistics.median(times)


def map_uneven(tc, engines: int) -> float:
    ideal = max(sum(UNEVEN) / engines, max(UNEVEN))
    spans = []
    for _ in range(3):
        t0 = time.perf_counter()
        assert tc.map(sleep_for, UNEVEN) == UNEVEN
        spans.append(time.perf_counter() - t0)
    return statistics.median(spans) / ideal


def tasks_uneven(tc, engines: int, lengths: list[float]) -> float:
    from plait.kernel import client

    ideal = max(sum(lengths) / engines, max(lengths))
    spans = []
    for _ in range(3):
        t0 = time.perf_counter()
        tc.barrier([tc.run(client.MapTask(sleep_for, args=(s,))) for s in lengths])
        spans.append(time.perf_counter() - t0)
        tc.clear()
    return statistics.median(spans) / ideal


def measure(args: argparse.Namespace, scheme: str | None, hwm: int | None) -> dict:
    with cluster(args.engines, scheme, hwm) as tc:
        return {
            "latency": latency(tc, args.latency_count),
            "rate": rate(tc, args.tasks, args.rounds),
            "map": map_time(tc, args.map_n, args.rounds),
            "map_uneven": map_uneven(tc, args.engines),
            "tasks_alternating": tasks_uneven(tc, args.engines, [0.05, 0.005] * 16),
            "tasks_random": tasks_uneven(tc, args.engines, random_lengths()),
        }


def verdict(key: str, value: float) -> str:
    if key not in TARGETS:
        return ""
    op, bound = TARGETS[key]
    ok = value <= bound if op == "<=" else value >= bound
    return f"{op} {bound:g}  {'PASS' if ok else 'FAIL'}"


UNITS = {"latency": "ms", "rate": "tasks/s", "map": "s", "map_uneven": "x ideal",
         "tasks_alternating": "x ideal", "tasks_random": "x ideal"}


def report(figures: dict) -> None:
    for key, value in figures.items():
        shown = f"{value:.0f}" if key == "rate" else f"{value:.3g}"
        print(f"  {key:17s} {shown:>9s} {UNITS[key]:8s} {verdict(key, value)}")


def compare(args: argparse.Namespace) -> None:
    settings = [("leastload", None), ("leastload", 1), ("leastload", 2), ("leastload", 0),
                ("lru", 1), ("fifo", 1), ("plainrandom", 1), ("twobin", 1), ("weighted", 1),
                ("lru", None), ("plainrandom", None)]
    print("| scheme | hwm | latency ms | tasks/s | map s | map_uneven | tasks_alternating "
          "| tasks_random |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for scheme, hwm in settings:
        f = measure(args, scheme, hwm)
        print(f"| {scheme} | {'auto' if hwm is None else hwm} | {f['latency']:.2f} "
              f"| {f['rate']:.0f} | {f['map']:.3f} | {f['map_uneven']:.2f} "
              f"| {f['tasks_alternating']:.2f} | {f['tasks_random']:.2f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engines", type=int, default=2)
    p.add_argument("--scheme", default=None, help="ipcontroller --scheme (default: its own)")
    p.add_argument("--hwm", type=int, default=None, help="ipcontroller --hwm (default: adaptive)")
    p.add_argument("--tasks", type=int, default=3000, help="tasks per rate round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--latency-count", type=int, default=500)
    p.add_argument("--map-n", type=int, default=10_000)
    p.add_argument("--compare", action="store_true", help="a table over schemes and hwm values")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print(f"plait task benchmark: {args.engines} engines, load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    if args.compare:
        compare(args)
    else:
        print(f"scheme {args.scheme or 'default'}, hwm "
              f"{'default' if args.hwm is None else args.hwm}")
        report(measure(args, args.scheme, args.hwm))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
