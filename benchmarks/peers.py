"""The peers' figures: ipyparallel and dask.distributed, doing what plait's figures do.

``python peers.py PEER --params JSON --out FILE`` with PEER ``ipyparallel`` or
``dask``; ``params["ops"]`` names the figures wanted (the keys of plait's
figures).  Each peer runs in this child process with clusters of its own
(``ipp.Cluster`` with a temporary IPYTHONDIR; ``LocalCluster(processes=True,
threads_per_worker=1)`` with a temporary local directory), stopped in
``finally`` blocks; ``run.py`` kills anything they leave behind.

What each peer figure measures is in :data:`LABELS`, by plait figure key.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    MB,
    TOKEN_VAR,
    Results,
    child_main,
    median,
    pids_with_token,
    rng_array,
    timed,
)
from plait_bench import ideal_makespan, rtt, uneven_sleeps  # noqa: E402


# The functions the peers run are defined here, in the child's __main__, so that
# ipyparallel (which cans a function by reference when its module is importable) and
# dask (cloudpickle) both send them by value, as plait does from its own child.
def power10(x):
    return x**10


def noop():
    return None


def sleep_for(seconds):
    import time

    time.sleep(seconds)
    return seconds


PEERS = ("ipyparallel", "dask")
LABELS = {
    "ipyparallel": {
        "start": "Cluster(n=2).start_and_connect_sync + wait_for_engines",
        "stop": "Cluster.stop_cluster_sync()",
        "rtt_one": "rc[0].execute('pass', block=True) round trip",
        "pushpull": "rc[0].push + rc[0].pull {size} array",
        "execute_all": "rc[:].execute('pass') round trip, 4 engines",
        "dv_map": "rc[:].map_sync(lambda x: x**10, range({n})), 4 engines",
        "scatter_gather": "rc[:].scatter + gather {size} float64, 4 engines",
        "task_latency": "load_balanced_view().apply_sync(noop) latency",
        "task_rate": "lview.apply_async(noop) x N + lview.wait",
        "task_map": "lview.map_sync(x**10, range({n})), chunksize 1 (default)",
        "task_uneven": "lview.map_sync of uneven sleeps: makespan / ideal",
        "par_rtt": "rc[0].apply_sync(noop) round trip",
        "par_lb_rtt": "lview.apply_sync(noop) round trip",
        "par_rate": "lview.apply_async(noop) x N + rc.wait",
        "par_map": "lview.map_sync(x**10, range({n})), default chunksize (1)",
        "par_pushpull": "rc[0].push + rc[0].pull {size} array",
        "par_dag": "a DAG of N tasks, 3 dependencies each (after=)",
        "cluster_start4": "Cluster(n=4).start_and_connect_sync + wait_for_engines",
    },
    "dask": {
        "start": "LocalCluster(n_workers=2) + Client + wait_for_workers",
        "stop": "Client.close() + LocalCluster.close()",
        "rtt_one": "submit(noop).result() round trip",
        "pushpull": "scatter(a, workers=[w]) + gather {size} array",
        "execute_all": "client.run(noop) round trip, 4 workers",
        "scatter_gather": "scatter 4 pieces + gather {size} float64, 4 workers",
        "task_latency": "submit(noop).result() latency",
        "task_rate": "submit(noop, pure=False) x N + wait",
        "task_map": "gather(client.map(x**10, range({n}))) (defaults)",
        "task_uneven": "client.map of uneven sleeps: makespan / ideal",
        "cluster_start4": "LocalCluster(n_workers=4) + Client + wait_for_workers",
    },
}
TWO = {"start", "stop", "rtt_one", "task_latency", "task_rate", "task_map", "task_uneven"}
#: The parallel section's figures ipyparallel is measured for (its own API: the same calls).
PARALLEL = {"par_rtt", "par_lb_rtt", "par_rate", "par_map", "par_pushpull", "par_dag",
            "cluster_start4"}
FOUR = {"execute_all", "dv_map", "scatter_gather"}


def installed(peer: str) -> str | None:
    """The version of ``peer`` if it can be imported here, else None."""
    module = {"dask": "distributed"}.get(peer, peer)
    if importlib.util.find_spec(module) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "?"


def _wanted(ops: set[str], group: set[str]) -> bool:
    return bool(ops & group) or (group is TWO and any(o.startswith("pushpull_") for o in ops))


def _pushpull_sizes(ops: set[str]) -> list[float]:
    return [float(o[len("pushpull_"):-2]) for o in sorted(ops) if o.startswith("pushpull_")]


def _record_pushpull(r: Results, key: str, nbytes: int, rounds: list[tuple[float, float]]
                     ) -> None:
    rates = [2 * nbytes / (a + b) / MB for a, b in rounds]
    r.add(key, median(rates), each=rates,
          detail=f"push {median([nbytes / a / MB for a, _ in rounds]):.0f} MB/s, "
                 f"pull {median([nbytes / b / MB for _, b in rounds]):.0f} MB/s (medians)")


def _start_stop_cycles(make_cluster, first_cycle, ops: set[str], p: dict, r: Results) -> None:
    """Start and stop 2-engine clusters (``cycles`` times when timing start/stop),
    run ``first_cycle(cluster)`` on the first one, and record start and stop."""
    starts, stops, calls = [], [], []
    for cycle in range(p["cycles"] if ops & {"start", "stop"} else 1):
        c = make_cluster()
        try:
            starts.append(c.start())
            if cycle == 0:
                first_cycle(c)
        finally:
            stops.append(c.stop())
            calls.append(c.call_time)
    _record_start_stop(r, starts, stops, calls)


def _record_start_stop(r: Results, starts: list[float], stops: list[float],
                       calls: list[float]) -> None:
    r.add("start", median(starts), each=starts)
    r.add("stop", median(stops), each=stops,
          detail=f"until its processes were gone; the stop call returned after "
                 f"{median(calls):.2f} s")


def _start4(make_cluster, p: dict, r: Results) -> None:
    """The median start of a 4-engine cluster to a usable client, after an untimed cycle."""
    starts = []
    for cycle in range(p["cycles"] + 1):
        c = make_cluster()
        try:
            started = c.start()
        finally:
            c.stop()
        if cycle:
            starts.append(started)
    r.add("cluster_start4", median(starts), each=starts)


def _map_figure(r: Results, key: str, run_map, p: dict, repeat: int, note: str = "") -> None:
    """Median time of ``run_map(range(map_n))`` after a checked warm-up on another range."""
    if list(run_map(range(-100, 0))) != [power10(x) for x in range(-100, 0)]:
        raise AssertionError(f"{key}: the warm-up map returned a wrong result")
    times = [timed(lambda: run_map(range(p["map_n"]))) for _ in range(repeat)]
    r.add(key, median(times), each=times, detail=f"n={p['map_n']}{note}")


def _uneven(r: Results, p: dict, run_map) -> None:
    sleeps = uneven_sleeps(p["uneven_scale"])
    ideal = ideal_makespan(sleeps, 2)
    spans = [timed(lambda: run_map(sleeps)) for _ in range(max(1, min(p["repeat"], 3)))]
    r.add("task_uneven", median(spans) / ideal, each=spans,
          detail=f"makespan {median(spans):.3f} s vs ideal {ideal:.3f} s")


# -- ipyparallel -----------------------------------------------------------------------------


class PeerCluster:
    """Start/stop timing shared by the peers' clusters.

    ``stop`` returns the seconds until the cluster's processes are gone (what
    ``ipcluster stop`` waits for), and keeps the seconds until the stop call
    returned in ``call_time``; ipyparallel's call returns before its engines'
    nanny processes exit.  Processes are recognised by the token run.py puts
    in the environment; without it only the call is timed.
    """

    n: int

    def start(self) -> float:
        self.baseline = set(self._processes())
        t0 = time.perf_counter()
        self._start()
        return time.perf_counter() - t0

    def stop(self) -> float:
        t0 = time.perf_counter()
        self._stop()
        self.call_time = time.perf_counter() - t0
        deadline = t0 + 30
        while self._processes() and time.perf_counter() < deadline:
            time.sleep(0.02)
        return time.perf_counter() - t0

    def _processes(self) -> list[int]:
        token = os.environ.get(TOKEN_VAR)
        if not token:
            return []
        found = []
        for pid in pids_with_token(token):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if pid not in getattr(self, "baseline", ()) and b"resource_tracker" not in cmdline:
                found.append(pid)
        return found

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError


class IppCluster(PeerCluster):
    def __init__(self, n: int):
        import ipyparallel as ipp

        self.n = n
        self.cluster = ipp.Cluster(n=n, log_level=logging.ERROR)
        self.rc = None

    def _start(self) -> None:
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(self.n, timeout=120)

    def _stop(self) -> None:
        if self.rc is not None:
            self.rc.close()
            self.rc = None
        self.cluster.stop_cluster_sync()


def ipyparallel(p: dict, r: Results) -> None:
    os.environ["IPYTHONDIR"] = os.path.join(p["tmp"], "ipython")
    ops = set(p["ops"])
    if _wanted(ops, TWO):
        _start_stop_cycles(lambda: IppCluster(2), lambda c: _ipp_two(c.rc, ops, p, r), ops, p, r)
    if "cluster_start4" in ops:
        r.measure("cluster_start4", lambda: _start4(lambda: IppCluster(4), p, r))
    if ops & PARALLEL - {"cluster_start4"}:
        c = IppCluster(2)
        try:
            c.start()
            _ipp_parallel(c.rc, ops, p, r)
        finally:
            c.stop()
    if _wanted(ops, FOUR):
        c = IppCluster(4)
        try:
            c.start()
            dv = c.rc[:]
            if "execute_all" in ops:
                r.measure("execute_all", lambda: r.add(
                    "execute_all", rtt(lambda: dv.execute("pass", block=True), p["rtt_count"])
                    * 1e3))
            if "dv_map" in ops:
                r.measure("dv_map", lambda: _map_figure(
                    r, "dv_map", lambda seq: dv.map_sync(power10, seq), p, p["repeat"]))
            if "scatter_gather" in ops:
                r.measure("scatter_gather", lambda: _ipp_scatter(dv, p, r))
        finally:
            c.stop()


def _ipp_two(rc, ops: set[str], p: dict, r: Results) -> None:
    v = rc[0]
    if "rtt_one" in ops:
        r.measure("rtt_one", lambda: r.add(
            "rtt_one", rtt(lambda: v.execute("pass", block=True), p["rtt_count"]) * 1e3))
    for size in _pushpull_sizes(ops):
        key = f"pushpull_{size:g}MB"

        def pushpull(key=key, nbytes=int(size * MB)) -> None:
            a = rng_array(nbytes)
            v.push(dict(a=a), block=True)
            v.pull("a", block=True)
            rounds = [(timed(lambda: v.push(dict(a=a), block=True)),
                       timed(lambda: v.pull("a", block=True))) for _ in range(p["repeat"])]
            v.execute("del a", block=True)
            _record_pushpull(r, key, nbytes, rounds)

        r.measure(key, pushpull)
    lv = rc.load_balanced_view()
    if "task_latency" in ops:
        r.measure("task_latency", lambda: r.add(
            "task_latency", rtt(lambda: lv.apply_sync(noop), p["latency_count"]) * 1e3))
    if "task_rate" in ops:
        r.measure("task_rate", lambda: _ipp_rate(r, "task_rate", lv, lv.wait, p["tasks"], p))
    if "task_map" in ops:
        r.measure("task_map", lambda: _map_figure(
            r, "task_map", lambda seq: lv.map_sync(power10, seq), p, p["peer_map_repeat"],
            ", chunksize 1"))
    if "task_uneven" in ops:
        r.measure("task_uneven", lambda: _uneven(r, p, lambda s: lv.map_sync(sleep_for, s)))


def _ipp_rate(r: Results, key: str, lv, wait, n: int, p: dict) -> None:
    """Tasks/s of ``n`` no-op ``lv.apply_async`` then ``wait(ars)``, median of rounds."""
    rates = []
    for _ in range(p["rate_rounds"]):
        t0 = time.perf_counter()
        ars = [lv.apply_async(noop) for _ in range(n)]
        wait(ars)
        rates.append(n / (time.perf_counter() - t0))
        ars[-1].get()
    r.add(key, median(rates), each=rates, detail=f"{n} tasks a round")


def _ipp_parallel(rc, ops: set[str], p: dict, r: Results) -> None:
    """The parallel section's figures, with ipyparallel's own API (what plait's mimics)."""
    from plait_bench import dag_edges

    v, lv = rc[0], rc.load_balanced_view()
    if "par_rtt" in ops:
        r.measure("par_rtt", lambda: r.add(
            "par_rtt", rtt(lambda: v.apply_sync(noop), p["rtt_count"]) * 1e3))
    if "par_lb_rtt" in ops:
        r.measure("par_lb_rtt", lambda: r.add(
            "par_lb_rtt", rtt(lambda: lv.apply_sync(noop), p["rtt_count"]) * 1e3))
    if "par_rate" in ops:
        r.measure("par_rate", lambda: _ipp_rate(r, "par_rate", lv, rc.wait,
                                                p["peer_par_tasks"], p))
    if "par_map" in ops:
        r.measure("par_map", lambda: _map_figure(
            r, "par_map", lambda seq: lv.map_sync(power10, seq), p, p["peer_map_repeat"],
            ", chunksize 1 (its default)"))
    if "par_pushpull" in ops:
        def pushpull() -> None:
            nbytes = int(max(p["sizes"]) * MB)
            a = rng_array(nbytes)
            v.push(dict(a=a), block=True)
            v.pull("a", block=True)
            rounds = [(timed(lambda: v.push(dict(a=a), block=True)),
                       timed(lambda: v.pull("a", block=True))) for _ in range(p["repeat"])]
            v.execute("del a", block=True)
            _record_pushpull(r, "par_pushpull", nbytes, rounds)

        r.measure("par_pushpull", pushpull)
    if "par_dag" in ops:
        def dag() -> None:
            n = p["peer_par_tasks"]
            t0 = time.perf_counter()
            ars = []
            for deps in dag_edges(n):
                with lv.temp_flags(after=[ars[j] for j in deps]):
                    ars.append(lv.apply_async(noop))
            rc.wait(ars)
            r.add("par_dag", n / (time.perf_counter() - t0), detail=f"{n} tasks")

        r.measure("par_dag", dag)


def _ipp_scatter(dv, p: dict, r: Results) -> None:
    nbytes = int(p["scatter_mb"] * MB)
    a = rng_array(nbytes)
    dv.scatter("a", a, block=True)
    dv.gather("a", block=True)
    rounds = [(timed(lambda: dv.scatter("a", a, block=True)),
               timed(lambda: dv.gather("a", block=True))) for _ in range(p["repeat"])]
    _record_pushpull(r, "scatter_gather", nbytes, rounds)


# -- dask ------------------------------------------------------------------------------------


class DaskCluster(PeerCluster):
    def __init__(self, n: int, directory: str):
        self.n, self.directory = n, directory
        self.cluster = self.client = None

    def _start(self) -> None:
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=self.n, threads_per_worker=1, processes=True,
                                    dashboard_address=None, silence_logs=logging.ERROR,
                                    local_directory=self.directory)
        self.client = Client(self.cluster)
        self.client.wait_for_workers(self.n, timeout=120)

    def _stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def dask(p: dict, r: Results) -> None:
    import cloudpickle
    import plait_bench

    # Ship the benchmark functions by value, as plait (their __main__) and ipyparallel do.
    cloudpickle.register_pickle_by_value(plait_bench)
    ops = set(p["ops"])
    directory = os.path.join(p["tmp"], "dask")
    if "cluster_start4" in ops:
        r.measure("cluster_start4", lambda: _start4(lambda: DaskCluster(4, directory), p, r))
    if _wanted(ops, TWO):
        _start_stop_cycles(lambda: DaskCluster(2, directory),
                           lambda c: _dask_two(c.client, ops, p, r), ops, p, r)
    if ops & {"execute_all", "scatter_gather"}:
        c = DaskCluster(4, directory)
        try:
            c.start()
            client = c.client
            if "execute_all" in ops:
                r.measure("execute_all", lambda: r.add(
                    "execute_all", rtt(lambda: client.run(noop), p["rtt_count"]) * 1e3,
                    detail="client.run(noop) on the 4 workers"))
            if "scatter_gather" in ops:
                r.measure("scatter_gather", lambda: _dask_scatter(client, p, r))
        finally:
            c.stop()


def _dask_two(client, ops: set[str], p: dict, r: Results) -> None:
    from dask.distributed import wait

    if ops & {"rtt_one", "task_latency"}:
        def latency() -> None:
            ms = rtt(lambda: client.submit(noop, pure=False).result(), p["rtt_count"]) * 1e3
            for key in ops & {"rtt_one", "task_latency"}:
                r.add(key, ms, detail="submit(noop).result(): dask's one round trip")

        r.measure(sorted(ops & {"rtt_one", "task_latency"}), latency)
    worker = list(client.scheduler_info()["workers"])[0]
    for size in _pushpull_sizes(ops):
        key = f"pushpull_{size:g}MB"

        def pushpull(key=key, nbytes=int(size * MB)) -> None:
            a = rng_array(nbytes)

            def once() -> tuple[float, float]:
                t0 = time.perf_counter()
                future = client.scatter(a, workers=[worker], hash=False)
                t1 = time.perf_counter()
                client.gather(future)
                t2 = time.perf_counter()
                future.release()
                return t1 - t0, t2 - t1

            once()
            _record_pushpull(r, key, nbytes, [once() for _ in range(p["repeat"])])

        r.measure(key, pushpull)
    if "task_rate" in ops:
        def rate() -> None:
            n, rates = p["tasks"], []
            for _ in range(p["rate_rounds"]):
                t0 = time.perf_counter()
                futures = [client.submit(noop, pure=False) for _ in range(n)]
                wait(futures)
                rates.append(n / (time.perf_counter() - t0))
                futures[-1].result()
                del futures
            r.add("task_rate", median(rates), each=rates, detail=f"{n} tasks a round")

        r.measure("task_rate", rate)
    if "task_map" in ops:
        r.measure("task_map", lambda: _map_figure(
            r, "task_map", lambda seq: client.gather(client.map(power10, seq)), p,
            p["peer_map_repeat"]))
    if "task_uneven" in ops:
        r.measure("task_uneven", lambda: _uneven(
            r, p, lambda s: client.gather(client.map(sleep_for, s, pure=False))))


def _dask_scatter(client, p: dict, r: Results) -> None:
    import numpy as np

    nbytes = int(p["scatter_mb"] * MB)
    a = rng_array(nbytes)

    def once() -> tuple[float, float]:
        t0 = time.perf_counter()
        futures = client.scatter(np.array_split(a, 4), hash=False)
        t1 = time.perf_counter()
        np.concatenate(client.gather(futures))
        t2 = time.perf_counter()
        client.cancel(futures)
        return t1 - t0, t2 - t1

    once()
    _record_pushpull(r, "scatter_gather", nbytes, [once() for _ in range(p["repeat"])])


def main_child(p: dict, r: Results) -> None:
    with tempfile.TemporaryDirectory(prefix="plait-bench-peer-") as tmp:
        {"ipyparallel": ipyparallel, "dask": dask}[p["what"]](dict(p, tmp=tmp), r)


if __name__ == "__main__":
    child_main(main_child)
