"""plait's figures: one section per child process, each on clusters of its own.

``python plait_bench.py SECTION --params JSON --out FILE`` with SECTION one of
``foundation``, ``multiengine``, ``task``, ``parallel``.  Clusters are started with
``ipcluster start -n N --daemonize`` in a temporary PLAIT_DIR and stopped with
``ipcluster stop`` in ``finally`` blocks.  What each figure means is written
in ``run.py``'s catalogue (``python run.py --list``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    MB,
    PlaitCluster,
    Results,
    child_main,
    median,
    plait_cluster,
    rng_array,
    timed,
)


def power10(x):
    return x**10


def noop():
    return None


def sleep_for(seconds):
    import time

    time.sleep(seconds)
    return seconds


def uneven_sleeps(scale: float) -> list[float]:
    """Skewed task lengths: 8 long tasks first, then 24 short ones (sum 1.04 s at scale 1).

    Cut into two equal blocks of tasks (a static split), one engine would get
    0.88 s of work and the other 0.16 s; a balanced schedule ends near 0.52 s.
    """
    return [0.1 * scale] * 8 + [0.01 * scale] * 24


def ideal_makespan(sleeps: list[float], workers: int) -> float:
    return max(sum(sleeps) / workers, max(sleeps))


def rtt(call, count: int) -> float:
    """Median seconds of ``count`` calls, after 20 warm-up calls."""
    for _ in range(20):
        call()
    return median([timed(call) for _ in range(count)])


def _check_equal(got, want, what: str) -> None:
    import numpy as np

    if not np.array_equal(np.asarray(got), np.asarray(want)):
        raise AssertionError(f"{what}: the data that came back differs from what was sent")


# -- foundation ------------------------------------------------------------------------------


def foundation(p: dict, r: Results) -> None:
    starts, stops, notes = [], [], set()
    for cycle in range(p["cycles"]):
        cluster = PlaitCluster(2)
        if cluster.note:
            notes.add(cluster.note)
        try:
            starts.append(cluster.start())
            if cycle == 0:
                _foundation_on(cluster, p, r)
            stops.append(cluster.stop())
        finally:
            cluster.close()
    detail = "; ".join(sorted(notes))
    r.add("start", median(starts), each=starts, detail=detail)
    r.add("stop", median(stops), each=stops, detail=detail)


def _foundation_on(cluster: PlaitCluster, p: dict, r: Results) -> None:
    from plait.kernel import client

    mec = client.MultiEngineClient(cluster.furl("mec"))
    ids = mec.get_ids()
    if len(ids) != 2:
        raise RuntimeError(f"expected 2 engines, the controller has {ids}")
    r.measure("rtt_one", lambda: r.add(
        "rtt_one", rtt(lambda: mec.execute("pass", targets=0), p["rtt_count"]) * 1e3))
    for size_mb in p["sizes"]:
        key = f"pushpull_{size_mb:g}MB"
        r.measure(key, lambda key=key, size_mb=size_mb: _push_pull(mec, key, size_mb, p, r))


def _push_pull(mec, key: str, size_mb: float, p: dict, r: Results) -> None:
    nbytes = int(size_mb * MB)
    a = rng_array(nbytes)
    mec.push(dict(a=a), targets=0)  # warm-up, and a check that the data survives the trip
    _check_equal(mec.pull("a", targets=0)[0], a, "push+pull")
    rates, pushes, pulls = [], [], []
    for _ in range(p["repeat"]):
        t_push = timed(lambda: mec.push(dict(a=a), targets=0))
        t_pull = timed(lambda: mec.pull("a", targets=0))
        pushes.append(nbytes / t_push / MB)
        pulls.append(nbytes / t_pull / MB)
        rates.append(2 * nbytes / (t_push + t_pull) / MB)
    mec.execute("del a", targets=0)
    r.add(key, median(rates), each=rates,
          detail=f"push {median(pushes):.0f} MB/s, pull {median(pulls):.0f} MB/s (medians)")


# -- multiengine -----------------------------------------------------------------------------


def multiengine(p: dict, r: Results) -> None:
    from plait.kernel import client

    with plait_cluster(4) as cluster:
        mec = client.MultiEngineClient(cluster.furl("mec"))
        ids = mec.get_ids()
        if len(ids) != 4:
            raise RuntimeError(f"expected 4 engines, the controller has {ids}")
        r.measure(["execute_all", "execute_all_vs_one"], lambda: _execute_all(mec, p, r))
        r.measure("dv_map", lambda: _map(mec, p, r))
        r.measure("scatter_gather", lambda: _scatter_gather(mec, p, r))


def _execute_all(mec, p: dict, r: Results) -> None:
    one = lambda: mec.execute("pass", targets=0)  # noqa: E731
    every = lambda: mec.execute("pass")  # noqa: E731
    for _ in range(20):
        one()
        every()
    # Interleaved, so that load from elsewhere falls on both alike.
    t_one, t_all = [], []
    for _ in range(p["rtt_count"]):
        t_one.append(timed(one))
        t_all.append(timed(every))
    r.add("execute_all", median(t_all) * 1e3,
          detail=f"1 engine in the same cluster: {median(t_one) * 1e3:.3f} ms")
    r.add("execute_all_vs_one", median(t_all) / median(t_one),
          detail=f"{median(t_all) * 1e3:.3f} ms / {median(t_one) * 1e3:.3f} ms, interleaved")


def _map(mec, p: dict, r: Results) -> None:
    n = p["map_n"]
    want = list(map(power10, range(n)))
    if list(mec.map(power10, range(n))) != want:
        raise AssertionError("mec.map returned a wrong result")
    times = [timed(lambda: mec.map(power10, range(n))) for _ in range(p["repeat"])]
    r.add("dv_map", median(times), each=times, detail=f"n={n}")


def _scatter_gather(mec, p: dict, r: Results) -> None:
    nbytes = int(p["scatter_mb"] * MB)
    a = rng_array(nbytes)
    mec.scatter("a", a)
    _check_equal(mec.gather("a"), a, "scatter+gather")
    rates, scatters, gathers = [], [], []
    for _ in range(p["repeat"]):
        t_s = timed(lambda: mec.scatter("a", a))
        t_g = timed(lambda: mec.gather("a"))
        scatters.append(nbytes / t_s / MB)
        gathers.append(nbytes / t_g / MB)
        rates.append(2 * nbytes / (t_s + t_g) / MB)
    mec.execute("del a")
    r.add("scatter_gather", median(rates), each=rates,
          detail=f"{p['scatter_mb']:g} MB; scatter {median(scatters):.0f} MB/s, "
                 f"gather {median(gathers):.0f} MB/s (medians)")


# -- task ------------------------------------------------------------------------------------

TASK_KEYS = ["task_latency", "task_rate", "task_rate_string", "task_map", "task_uneven"]


def task(p: dict, r: Results) -> None:
    try:
        from plait.kernel import client

        client.TaskClient, client.StringTask, client.MapTask  # noqa: B018
    except Exception as exc:
        for key in TASK_KEYS:
            r.skip(key, f"plait.kernel.client has no TaskClient/StringTask/MapTask yet ({exc})")
        return
    with plait_cluster(2) as cluster:
        try:
            tc = client.TaskClient(cluster.furl("tc"))
        except Exception as exc:
            for key in TASK_KEYS:
                r.skip(key, f"client.TaskClient() failed: {type(exc).__name__}: {exc}")
            return
        r.measure("task_latency", lambda: _task_latency(client, tc, p, r))
        r.measure("task_rate", lambda: _task_rate(tc, lambda: client.MapTask(noop), "task_rate",
                                                  p, r))
        r.measure("task_rate_string", lambda: _task_rate(
            tc, lambda: client.StringTask("pass"), "task_rate_string", p, r))
        r.measure("task_map", lambda: _task_map(tc, p, r))
        r.measure("task_uneven", lambda: _task_uneven(tc, p, r))


def _task_latency(client, tc, p: dict, r: Results) -> None:
    def one():
        tr = tc.get_task_result(tc.run(client.MapTask(noop)), block=True)
        if tr.failure is not None:
            raise RuntimeError(f"a no-op task failed: {tr.failure}")

    r.add("task_latency", rtt(one, p["latency_count"]) * 1e3)


def _task_rate(tc, make, key: str, p: dict, r: Results) -> None:
    n = p["tasks"]
    warm = [tc.run(make()) for _ in range(50)]
    tc.barrier(warm)
    rates = []
    for _ in range(p["rate_rounds"]):
        t0 = time.perf_counter()
        ids = [tc.run(make()) for _ in range(n)]
        tc.barrier(ids)
        elapsed = time.perf_counter() - t0
        rates.append(n / elapsed)
        last = tc.get_task_result(ids[-1])
        if last is None or last.failure is not None:
            raise RuntimeError(f"the last no-op task did not succeed: {last!r}")
    r.add(key, median(rates), each=rates, detail=f"{n} tasks a round")


def _task_map(tc, p: dict, r: Results) -> None:
    n = p["map_n"]
    if list(tc.map(power10, range(n))) != list(map(power10, range(n))):
        raise AssertionError("tc.map returned a wrong result")
    times = [timed(lambda: tc.map(power10, range(n))) for _ in range(p["repeat"])]
    r.add("task_map", median(times), each=times, detail=f"n={n}")


def _task_uneven(tc, p: dict, r: Results) -> None:
    sleeps = uneven_sleeps(p["uneven_scale"])
    ideal = ideal_makespan(sleeps, 2)
    spans = []
    for _ in range(max(1, min(p["repeat"], 3))):
        t0 = time.perf_counter()
        got = tc.map(sleep_for, sleeps)
        spans.append(time.perf_counter() - t0)
        if list(got) != sleeps:
            raise AssertionError("tc.map of the uneven tasks returned a wrong result")
    r.add("task_uneven", median(spans) / ideal, each=spans,
          detail=f"makespan {median(spans):.3f} s vs ideal {ideal:.3f} s "
                 f"({len(sleeps)} sleeps, {sum(sleeps):.2f} s of work on 2 engines)")


# -- parallel (the later generation) ----------------------------------------------------------

PARALLEL_KEYS = ["par_rtt", "par_lb_rtt", "par_rate", "par_map", "par_pushpull",
                 "par_pushpull_vs_mec", "par_dag", "par_dag_deep", "engine_private", "engine_gc",
                 "cluster_start4",
                 "scale_register", "scale_execute", "engine_restart", "controller_restart",
                 "chaos_lost", "chaos_recover", "status_open_rate", "status_page_cpu",
                 "ssh_start64", "slurm_ready", "par_hub_rss", "par_hub_query", "queued_rss",
                 "queued_rate", "queued_rss_purged", "scale_status", "queued_status",
                 "queued_history"]


def dag_edges(n: int, k: int = 3, window: int | None = None, seed: int = 1
              ) -> list[list[int]]:
    """For each of ``n`` tasks, the ``k`` earlier tasks it depends on, drawn among
    all the tasks before it (the random DAG of the NetworkX demo: edges between
    random nodes) or, with ``window``, among the ``window`` just before it (a
    deep DAG: its longest path is about 20 times the demo's)."""
    import random

    rng = random.Random(seed)
    return [rng.sample(range(0 if window is None else max(0, i - window), i), min(k, i))
            for i in range(n)]


def parallel(p: dict, r: Results) -> None:
    import plait.parallel as ipp
    from plait.kernel import client

    with plait_cluster(2) as cluster:
        rc = ipp.Client(cluster.furl("client"))
        rc.wait_for_engines(2, timeout=60)
        v, lv = rc[0], rc.load_balanced_view()
        r.measure("par_rtt", lambda: r.add(
            "par_rtt", rtt(lambda: v.apply_sync(noop), p["rtt_count"]) * 1e3,
            detail="rc[0].apply_sync(noop), SQLite hub"))
        r.measure("par_lb_rtt", lambda: r.add(
            "par_lb_rtt", rtt(lambda: lv.apply_sync(noop), p["rtt_count"]) * 1e3))
        r.measure("par_rate", lambda: _par_rate(rc, lv, p, r))
        r.measure("par_map", lambda: _map_figure_plait(r, "par_map", lv.map_sync, p))
        mec = client.MultiEngineClient(cluster.furl("mec"))
        r.measure(["par_pushpull", "par_pushpull_vs_mec"], lambda: _par_pushpull(v, mec, p, r))
        r.measure("par_dag", lambda: _par_dag(rc, lv, p["dag_n"], r))
        r.measure("par_dag_deep", lambda: _par_dag(rc, lv, p["dag_n"], r, window=64))
        r.measure(["engine_private", "engine_gc"], lambda: _engine_memory(rc, r))
        rc.close()
    with plait_cluster(2) as cluster:
        r.measure(["par_hub_rss", "par_hub_query"], lambda: _par_hub(cluster, p, r))
    r.measure("cluster_start4", lambda: _cluster_start4(p, r))
    r.measure(["scale_register", "scale_execute", "scale_status"], lambda: _scale(p, r))
    r.measure(["sim_register", "sim_execute", "sim_rate_ratio", "sim_rss_engine"],
              lambda: _simulated(p, r))
    r.measure(["queued_rss", "queued_rate", "queued_rss_purged", "queued_status",
               "queued_history"], lambda: _queued(p, r))
    r.measure("engine_restart", lambda: _engine_restart(p, r))
    r.measure("controller_restart", lambda: _controller_restart(p, r))
    r.measure(["chaos_lost", "chaos_recover"], lambda: _chaos(p, r))
    r.measure(["status_open_rate", "status_page_cpu"], lambda: _status_page(p, r))
    r.measure("ssh_start64", lambda: _ssh_start64(p, r))
    r.measure("slurm_ready", lambda: _slurm_ready(p, r))


def _in_plait_dir(run):
    """``run()`` with PLAIT_DIR set to a temporary folder."""
    import os
    import tempfile

    saved = os.environ.get("PLAIT_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PLAIT_DIR"] = tmp
        try:
            return run(Path(tmp))
        finally:
            if saved is None:
                os.environ.pop("PLAIT_DIR", None)
            else:
                os.environ["PLAIT_DIR"] = saved


def _test_support():
    import sys

    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def _ssh_start64(p: dict, r: Results) -> None:
    """64 engines over SSH on 3 network-namespace hosts (real sshd), to a client
    that sees them all; needs root (tests/support/netns.py makes the hosts)."""
    _test_support()
    import plait.parallel as ipp
    from support.netns import Hosts, unavailable

    why = unavailable()
    if why is not None:
        raise RuntimeError(f"skipped: {why}")
    n = 64 if p["hub_results"] >= 100_000 else 9

    def run(tmp: Path) -> None:
        with Hosts(3, tmp / "hosts") as hosts:
            table = {host: n // 3 + (1 if i < n % 3 else 0)
                     for i, host in enumerate(hosts.table(1))}
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                cluster = ipp.Cluster(engines="ssh", hosts=table, ip=hosts.controller_ip,
                                      ssh_args=hosts.ssh_args, timeout=120,
                                      ssh_plait_dir=str(tmp / "remote"))
                try:
                    rc = cluster.start_and_connect()
                    times.append(time.perf_counter() - t0)
                    if len(rc.ids) != n:
                        raise AssertionError(f"{len(rc.ids)} of {n} engines")
                finally:
                    cluster.stop()
            r.add("ssh_start64", median(times), each=times,
                  detail=f"{n} engines on 3 namespace hosts ({sorted(table.values())}), "
                         f"median of {len(times)}")

    _in_plait_dir(run)


def _slurm_ready(p: dict, r: Results) -> None:
    """From the engines' job starting (the line its script writes first) to its 4
    engines registered, on a real Slurm of this machine; sbatch's return too."""
    _test_support()
    import re

    import plait.parallel as ipp
    from plait.cluster import batch
    from support.slurm import Slurm, unavailable

    why = unavailable()
    if why is not None:
        raise RuntimeError(f"skipped: {why}")
    submitted: list[float] = []
    real_submit = batch.submit

    def timed_submit(*args, **kwargs):
        job = real_submit(*args, **kwargs)
        submitted.append(time.time())
        return job

    def run(tmp: Path) -> None:
        batch.submit = timed_submit
        try:
            with Slurm(tmp / "slurm"):
                from_start, from_sbatch = [], []
                for _ in range(3):
                    cluster = ipp.Cluster(n=4, engines="slurm", timeout=120)
                    try:
                        cluster.start()
                        registered = time.time()
                        [log] = [g.log for g in cluster._procs.engine_sets]
                        found = re.search(r"started on \S+ at ([\d.]+)", log.read_text())
                        if found is None:
                            raise AssertionError("the job did not say when it started")
                        from_start.append(registered - float(found.group(1)))
                        from_sbatch.append(registered - submitted[-1])
                    finally:
                        cluster.stop()
                r.add("slurm_ready", median(from_start), each=from_start,
                      detail=f"4 engines in one job, median of {len(from_start)}; from "
                             f"sbatch's return: {median(from_sbatch):.2f} s")
        finally:
            batch.submit = real_submit

    _in_plait_dir(run)


def _in_fresh_plait_dir(run) -> None:
    """``run()`` with PLAIT_DIR a temporary folder of its own."""
    import os
    import tempfile

    saved = os.environ.get("PLAIT_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PLAIT_DIR"] = tmp
        try:
            run()
        finally:
            if saved is None:
                os.environ.pop("PLAIT_DIR", None)
            else:
                os.environ["PLAIT_DIR"] = saved


def _scale(p: dict, r: Results) -> None:
    """N engines of this host on one controller: their registration, and one
    command to all of them."""
    import plait.parallel as ipp
    from plait.kernel import client

    n = p["scale_engines"]

    def run() -> None:
        t0 = time.perf_counter()
        cluster = ipp.Cluster(n=n, timeout=300)
        try:
            rc = cluster.start_and_connect()
            registered = time.perf_counter() - t0
            mec = client.MultiEngineClient()
            if len(mec.get_ids()) != n:
                raise AssertionError(f"{len(mec.get_ids())} of {n} engines registered")
            each = _execute_times(mec, warm=3, count=10)
            page = _page_times_or_why(rc.dashboard_url, ["status.json"])
            rc.close()
        finally:
            cluster.stop()
        r.add("scale_register", registered, detail=f"{n} engines forked by the fork server")
        r.add("scale_execute", median(each), each=each, detail=f"{n} engines")
        if isinstance(page, str):  # (the other figures stand)
            r.error("scale_status", page)
        else:
            r.add("scale_status", page["status.json"], detail=f"{n} engines; each snapshot "
                  f"(twice a second while a page watches) took the controller "
                  f"{page['snapshot_ms']:.1f} ms")

    _in_fresh_plait_dir(run)


def _queued(p: dict, r: Results) -> None:
    """Many no-op tasks queued by one client while both engines are busy, then run:
    the controller's RSS with them queued, their rate once the engines are free,
    and its RSS once their results are purged."""
    import json
    import tempfile

    import plait.parallel as ipp

    n = p["queued_tasks"]

    def run() -> None:
        import os

        cluster = ipp.Cluster(n=2, timeout=120)
        try:
            rc = cluster.start_and_connect()
            state = Path(os.environ["PLAIT_DIR"]) / "profile_default" / "run" / "ipcluster.json"
            controller = json.loads(state.read_text())["controller"]
            lv = rc.load_balanced_view()
            rc.wait([lv.apply_async(noop) for _ in range(100)])
            idle = _rss_mb(controller)
            with tempfile.TemporaryDirectory() as gates:
                paths = {i: os.path.join(gates, f"gate{i}") for i in rc.ids}
                for path in paths.values():
                    os.mkfifo(path)
                busy = [rc[i].apply_async(_read_file, path) for i, path in paths.items()]
                t0 = time.perf_counter()
                ars = [lv.apply_async(noop) for _ in range(n)]
                ars[-1].wait_for_send()
                submitted = time.perf_counter() - t0
                queued = _rss_mb(controller)
                for path in paths.values():
                    with open(path, "w") as f:
                        f.write("go")
                t1 = time.perf_counter()
                if not rc.wait(ars, timeout=3600):
                    raise RuntimeError(f"the {n} queued tasks did not finish in an hour")
                ran = time.perf_counter() - t1
                rc.wait(busy)
            searches = ["history.json", "history.json?status=failed", "history.json?engine=1"]
            page = _page_times_or_why(rc.dashboard_url, ["status.json", *searches])
            failed = sum(1 for ar in ars if not ar.successful())
            if failed:
                raise AssertionError(f"{failed} of the {n} queued tasks failed")
            del ars
            rc.purge_everything()
            rc.wait([lv.apply_async(noop) for _ in range(100)])  # (the purge went through)
            rc.purge_everything()
            purged = _rss_mb(controller)
            rc.close()
        finally:
            cluster.stop()
        r.add("queued_rss", queued, detail=f"controller RSS {idle:.0f} MB idle, {queued:.0f} "
              f"MB with {n} tasks queued ({(queued - idle) * 1024 / n:.2f} KB each); "
              f"submitted at {n / submitted:.0f}/s")
        r.add("queued_rate", n / ran, detail=f"{n} queued tasks run in {ran:.1f} s on 2 engines")
        r.add("queued_rss_purged", purged, detail=f"controller RSS after their results were "
              f"purged ({idle:.0f} MB idle before)")
        if isinstance(page, str):  # (the other figures stand)
            r.error("queued_status", page)
            r.error("queued_history", page)
            return
        r.add("queued_status", page["status.json"], detail=f"{n} tasks recorded; each "
              f"snapshot took the controller {page['snapshot_ms']:.1f} ms")
        slowest = max(searches, key=page.__getitem__)
        r.add("queued_history", page[slowest], detail=f"{n} tasks recorded; the slowest of "
              f"{len(searches)} searches: {slowest}")

    _in_fresh_plait_dir(run)


def _read_file(path: str) -> str:
    with open(path) as f:
        return f.read()


def _page_times(url: str, paths: list[str], count: int = 5) -> dict[str, float]:
    """Median milliseconds of ``count`` GETs of each of the status page's ``paths``
    (``url``: the page's, with its token), after an untimed one, as its script
    makes them."""
    import json
    import urllib.request

    base, token = url.split("?token=")
    times = {}
    for path in paths:
        full = f"{base}{path}{'&' if '?' in path else '?'}token={token}"
        each = []
        for _ in range(count + 1):
            t0 = time.perf_counter()
            with urllib.request.urlopen(full, timeout=60) as answer:
                body = answer.read()
                if answer.status != 200 or not body:
                    raise AssertionError(f"the status page answered {answer.status} to {path}")
            each.append((time.perf_counter() - t0) * 1e3)
            if path == "status.json":  # (what the snapshot itself cost the controller)
                times["snapshot_ms"] = float(json.loads(body).get("snapshot_ms", "nan"))
        times[path] = median(each[1:])
    return times


def _page_times_or_why(url: str | None, paths: list[str]) -> dict[str, float] | str:
    """:func:`_page_times`, or why they could not be measured."""
    if not url:
        return "the controller serves no status page"
    try:
        return _page_times(url, paths)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]


def _execute_times(mec, warm: int, count: int) -> list[float]:
    """Milliseconds of ``count`` calls of mec.execute('pass') on every engine, after
    ``warm`` untimed ones."""
    for _ in range(warm):
        mec.execute("pass")
    each = []
    for _ in range(count):
        t1 = time.perf_counter()
        mec.execute("pass")
        each.append((time.perf_counter() - t1) * 1e3)
    return each


def _sim_round(n: int, tasks: int, rounds: int) -> dict:
    """A controller with ``n`` simulated engines (see sim_engines.py): how long they
    took to register, its RSS, execute('pass') on all of them, and the task rate."""
    import os
    import subprocess
    import sys

    from sim_engines import Simulation

    import plait.parallel as ipp
    from plait.kernel import client
    from plait.security import profile_dirs

    dirs = profile_dirs(None)
    controller = subprocess.Popen(
        [sys.executable, "-m", "plait.scripts.ipcontroller", "--no-status", "--db=memory",
         "--notify-fd=1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    sim = None
    try:
        assert controller.stdout is not None
        for line in controller.stdout:  # (its ready notice, after what it prints)
            if line.startswith("ready "):
                break
        else:
            raise RuntimeError("the controller did not start")
        t0 = time.perf_counter()
        sim = Simulation(dirs.furl_path("ipcontroller-engine.furl"), n,
                         processes=min(4, n), env=dict(os.environ))
        registered = sim.wait_registered()
        took = time.perf_counter() - t0
        mec = client.MultiEngineClient()
        if len(mec.get_ids()) != n or registered != n:
            raise AssertionError(f"{len(mec.get_ids())} of {n} simulated engines registered")
        rss = _rss_mb(controller.pid)
        each = _execute_times(mec, warm=1, count=5)
        rc = ipp.Client()
        lv = rc.load_balanced_view()
        rates = []
        for _ in range(rounds):
            t1 = time.perf_counter()
            ars = [lv.apply_async(noop) for _ in range(tasks)]
            rc.wait(ars)
            rates.append(tasks / (time.perf_counter() - t1))
        rc.close()
        return {"register": took, "rss": rss, "execute": median(each), "rate": max(rates)}
    finally:
        if sim is not None:
            sim.stop()
        controller.terminate()
        controller.wait(30)


def _simulated(p: dict, r: Results) -> None:
    """Thousands of engines simulated at the protocol level (a few processes,
    one TLS connection each, every engine registered, commanded and given
    tasks for real): registration, one command to all, and the task rate
    against the same with a tenth as many engines (the cost per task: with many
    idle engines each task travels alone, so the base has many engines too)."""
    n, tasks = p["sim_engines"], p["par_tasks"] // 2
    base = max(50, n // 10)
    out: dict[int, dict] = {}

    def run() -> None:
        for size in (base, n):
            out[size] = _sim_round(size, tasks, p["rate_rounds"])

    _in_fresh_plait_dir(run)
    small, big = out[base], out[n]
    r.add("sim_register", big["register"], detail=f"{n} simulated engines, 4 processes")
    r.add("sim_execute", big["execute"], detail=f"{n} engines")
    r.add("sim_rate_ratio", big["rate"] / small["rate"],
          detail=f"{big['rate']:.0f} tasks/s with {n} engines, {small['rate']:.0f} with {base}")
    r.add("sim_rss_engine", (big["rss"] - small["rss"]) * 1024 / (n - base),
          detail=f"controller RSS {big['rss']:.0f} MB with {n}, {small['rss']:.0f} with {base}")


def _controller_restart(p: dict, r: Results) -> None:
    """SIGKILL the controller of a cluster of 4 with 200 tasks queued; the time
    until the client has every engine back (ids kept), and until every queued
    task's result has come."""
    import os
    import signal

    import plait.parallel as ipp

    def run() -> None:
        back, done = [], []
        cluster = ipp.Cluster(n=4)
        try:
            rc = cluster.start_and_connect()
            lv = rc.load_balanced_view()
            for _ in range(1 if p["cycles"] == 1 else 3):
                pids = rc[:].apply_sync(os.getpid)
                ars = lv.map_async(lambda x: x, range(200), chunksize=1)
                ars.wait_for_send()  # (acknowledged: kept by the hub)
                t0 = time.perf_counter()
                os.kill(cluster.controller_pid, signal.SIGKILL)
                if ars.get(timeout=60) != list(range(200)):
                    raise AssertionError("the queued tasks gave wrong results")
                done.append(time.perf_counter() - t0)
                rc.wait_for_engines(4, timeout=60)
                if rc.ids != [0, 1, 2, 3] or rc[:].apply_sync(os.getpid) != pids:
                    raise AssertionError("the engines did not come back with their ids")
                back.append(time.perf_counter() - t0)
            rc.close()
        finally:
            cluster.stop()
        r.add("controller_restart", median(back), each=back,
              detail=f"4 engines, 200 tasks queued: all their results after "
                     f"{median(done):.2f} s (medians of {len(back)})")

    _in_fresh_plait_dir(run)


def _engine_pids(rc, n: int) -> list[int]:
    """The pids of ``n`` engines, asked until all answer (one killed just now may
    still be registered, or its replacement not yet)."""
    import os

    import plait.parallel as ipp

    for _ in range(100):
        rc.wait_for_engines(n, timeout=60)
        try:
            return rc[:].apply_sync(os.getpid)
        except ipp.error.CompositeError:
            continue
    raise AssertionError(f"{n} engines did not all answer")


#: The second client of :func:`_chaos`: it submits N tasks, says their msg_ids
#: once they are acknowledged, then waits for them until it is killed.
_OTHER_CLIENT = """
import json, sys
import plait.parallel as ipp
rc = ipp.Client()
view = rc.load_balanced_view()
with view.temp_flags(retries=5):
    ar = view.map_async(ipp.interactive(lambda i: 3 * i), range(int(sys.argv[1])), chunksize=1)
ar.wait_for_send()
print(json.dumps(ar.msg_ids), flush=True)
ar.get()
"""


def _chaos(p: dict, r: Results) -> None:
    """20,000 tasks (14,400 load-balanced with retries, 1,600 of a second client in
    a process of its own, 4,000 TaskClient ones) on 4 supervised engines while 4
    engines, the second client and the controller twice are SIGKILLed, each kill
    once so many results came: tasks lost or wrong, and the time from each
    controller kill to every engine back."""
    import json
    import os
    import random
    import signal
    import subprocess
    import sys

    import plait.parallel as ipp
    from plait.kernel import client

    n = 1600 if p["cycles"] == 1 else 16_000

    def run() -> None:
        rng = random.Random(5)
        cluster = ipp.Cluster(n=4, restart_engines=True)
        try:
            rc = cluster.start_and_connect()
            tc = client.TaskClient(os.path.join(os.environ["PLAIT_DIR"], "profile_default",
                                                "security", "ipcontroller-tc.furl"))
            lv = rc.load_balanced_view()
            t0 = time.perf_counter()
            other = subprocess.Popen([sys.executable, "-c", _OTHER_CLIENT, str(n // 10)],
                                     stdout=subprocess.PIPE, text=True)
            with lv.temp_flags(retries=5):
                ars = [lv.apply_async(lambda i: 2 * i, i) for i in range(n - n // 10)]
            tids = [tc.run(client.StringTask(f"y = 3 * {i}", pull="y", retries=5))
                    for i in range(n // 4)]
            tc.wait_for_send()  # (acknowledged: from now on no controller's death
            ars[-1].wait_for_send()  # may lose any of them)
            assert other.stdout is not None
            others = json.loads(other.stdout.readline())  # (acknowledged too)
            recover = []
            kills = [(n // 10, "engine"), (n // 6, "client"), (n // 4, "controller"),
                     (n * 2 // 5, "engine"), (n // 2, "engine"), (n * 3 // 5, "controller"),
                     (n * 3 // 4, "engine")]
            for after, what in kills:
                ars[after].get(timeout=120)
                if what == "client":
                    other.kill()
                    other.wait()
                elif what == "controller":
                    pid = cluster.controller_pid
                    k0 = time.perf_counter()
                    os.kill(pid, signal.SIGKILL)
                    rc.wait_for_engines(4, timeout=60)
                    recover.append(time.perf_counter() - k0)
                else:
                    os.kill(rng.choice(_engine_pids(rc, 4)), signal.SIGKILL)
            lost = 0
            for i, ar in enumerate(ars):
                try:
                    lost += ar.get(timeout=120) != 2 * i
                except Exception:
                    lost += 1
            try:  # the killed client's, from the hub (a map's: one chunk each)
                chunks = rc.get_result(others).get(timeout=120)
                values = [x for chunk in chunks for x in chunk]
                lost += sum(v != 3 * i for i, v in enumerate(values)) + len(others) - len(values)
            except Exception:
                lost += len(others)
            for i, taskid in enumerate(tids):
                for _ in range(3):
                    try:
                        lost += tc.get_task_result(taskid, block=True).ns.y != 3 * i
                        break
                    except client.PlaitConnectionError:
                        continue
                    except Exception:
                        lost += 1
                        break
            total = time.perf_counter() - t0
        finally:
            cluster.stop()
        r.add("chaos_lost", lost, detail=f"{n + n // 4} tasks, 4 engine, 1 client and 2 "
                                         f"controller SIGKILLs, {total:.1f} s in all")
        r.add("chaos_recover", median(recover), each=recover,
              detail="from a controller SIGKILL to the 4 engines back, during the run")

    _in_fresh_plait_dir(run)


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` used so far."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Blank:
    """A browser's page closed (left for about:blank) when the watcher is killed."""

    def __init__(self, browser: Any):
        self.browser = browser

    def kill(self) -> None:
        self.browser.get("about:blank")

    def wait(self) -> None:
        pass


def _browser() -> Any:
    """A headless chromium driven by Selenium (as the page's test drives it), or
    None when chromium, its driver or Selenium is missing."""
    import shutil

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        return None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1000,800"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def _status_page(p: dict, r: Results) -> None:
    """The status page's cost: the task rate with its event stream open over the
    rate with it closed (rounds interleaved), and the controller CPU its stream
    costs with N engines idle."""
    import subprocess

    import plait.parallel as ipp

    n_engines = 4 if p["cycles"] == 1 else 64
    how = "its event stream read by another process: no headless chromium here"
    browser: Any = None

    def run() -> None:
        nonlocal how, browser
        cluster = ipp.Cluster(n=n_engines)
        try:
            rc = cluster.start_and_connect()
            url = rc.dashboard_url
            base, token = url.split("?token=")
            lv = rc.load_balanced_view()
            n = p["par_tasks"]
            rc.wait([lv.apply_async(noop) for _ in range(200)])

            def rate() -> float:
                t0 = time.perf_counter()
                rc.wait([lv.apply_async(noop) for _ in range(n)])
                return n / (time.perf_counter() - t0)

            reader_code = ("import sys, urllib.request\n"
                           "s = urllib.request.urlopen(sys.argv[1], timeout=60)\n"
                           "s.readline()\n"
                           "print('reading', flush=True)\n"
                           "for line in iter(s.readline, b''):\n"
                           "    pass\n")
            events = f"{base}events?token={token}"

            def stream_reader() -> Any:  # the page's stream, read by another process
                proc = subprocess.Popen([sys.executable, "-c", reader_code, events],
                                        stdout=subprocess.PIPE, text=True)
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "reading":  # (started: now measure)
                    raise RuntimeError("the status page's stream did not open")
                return proc

            browser = _browser()  # the page itself, in a headless browser, if there is one
            if browser is not None:
                how = "in headless chromium, drawing each snapshot"

            def watcher() -> Any:
                if browser is None:
                    return stream_reader()
                browser.get(url)
                shown = time.monotonic() + 30  # (open: its engine count shows)
                while browser.find_element("id", "engine-count").text != str(n_engines):
                    if time.monotonic() > shown:
                        raise RuntimeError("the status page did not show in the browser")
                    time.sleep(0.05)
                return _Blank(browser)

            closed, opened = [], []
            for k in range(2 * p["rate_rounds"]):  # (in turn first: a round slows the next)
                if k % 4 in (0, 3):
                    closed.append(rate())
                    continue
                reader = watcher()
                opened.append(rate())
                reader.kill()
                reader.wait()
            pid = cluster.controller_pid
            idle = []
            for watching in (False, True, False, True):
                reader = watcher() if watching else None
                c0, t0 = _proc_cpu(pid), time.perf_counter()
                time.sleep(3)  # (a benchmark: a span of idle time is what is measured)
                idle.append((watching, (_proc_cpu(pid) - c0) / (time.perf_counter() - t0)))
                if reader is not None:
                    reader.kill()
                    reader.wait()
            rc.close()
        finally:
            if browser is not None:
                browser.quit()
            cluster.stop()
        ratio = median(opened) / median(closed)
        page = (median([c for w, c in idle if w]) - median([c for w, c in idle if not w])) * 100
        r.add("status_open_rate", ratio, each=[o / c for o, c in zip(opened, closed, strict=True)],
              detail=f"{median(opened):.0f} tasks/s with the page open ({how}), "
                     f"{median(closed):.0f} closed; {n_engines} engines")
        r.add("status_page_cpu", max(page, 0.0),
              detail=f"controller CPU % the open page adds ({how}), {n_engines} engines idle")

    _in_fresh_plait_dir(run)


def _engine_restart(p: dict, r: Results) -> None:
    """SIGKILL an engine of a supervised cluster; the time until its replacement
    answers under the same id."""
    import os
    import signal

    import plait.parallel as ipp

    def run() -> None:
        times = []
        cluster = ipp.Cluster(n=2, restart_engines=True)
        try:
            rc = cluster.start_and_connect()
            for _ in range(1 if p["cycles"] == 1 else 5):
                old = rc[1].apply_sync(os.getpid)
                t0 = time.perf_counter()
                os.kill(old, signal.SIGKILL)
                while True:  # the client asks until the new engine answers
                    try:
                        if rc[1].apply_sync(os.getpid) != old:
                            break
                    except (ipp.error.RemoteError, KeyError):
                        pass
                    if time.perf_counter() - t0 > 60:
                        raise AssertionError("engine 1 was not replaced within 60 s")
                    time.sleep(0.005)
                times.append(time.perf_counter() - t0)
            rc.close()
        finally:
            cluster.stop()
        r.add("engine_restart", median(times), each=times, detail="local engines, 2")

    _in_fresh_plait_dir(run)


def _cluster_start4(p: dict, r: Results) -> None:
    """Cluster(n=4).start_and_connect() in a profile of its own, after an untimed
    first cycle (which makes the profile's certificates)."""
    import os
    import tempfile

    import plait.parallel as ipp

    starts = []
    saved = os.environ.get("PLAIT_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PLAIT_DIR"] = tmp
        try:
            for cycle in range(p["cycles"] + 1):
                t0 = time.perf_counter()
                cluster = ipp.Cluster(n=4)
                try:
                    rc = cluster.start_and_connect()
                    elapsed = time.perf_counter() - t0
                    if len(set(rc[:].apply_sync(os.getpid))) != 4:
                        raise AssertionError("the 4 engines did not all answer")
                finally:
                    cluster.stop()
                if cycle:
                    starts.append(elapsed)
        finally:
            if saved is None:
                os.environ.pop("PLAIT_DIR", None)
            else:
                os.environ["PLAIT_DIR"] = saved
    r.add("cluster_start4", median(starts), each=starts,
          detail=f"median of {len(starts)} cycles, local engines forked by the fork server")


def _par_rate(rc, lv, p: dict, r: Results) -> None:
    n = p["par_tasks"]
    rc.wait([lv.apply_async(noop) for _ in range(100)])
    rates, submits = [], []
    for _ in range(p["rate_rounds"]):
        t0 = time.perf_counter()
        ars = [lv.apply_async(noop) for _ in range(n)]
        t1 = time.perf_counter()
        if not rc.wait(ars, timeout=600):
            raise RuntimeError("the tasks did not finish in 600 s")
        rates.append(n / (time.perf_counter() - t0))
        submits.append(n / (t1 - t0))
        ars[-1].get()
    r.add("par_rate", median(rates), each=rates,
          detail=f"{n} tasks a round, SQLite hub; submitting alone {median(submits):.0f}/s")


def _map_figure_plait(r: Results, key: str, run_map, p: dict) -> None:
    if list(run_map(power10, range(-100, 0))) != [power10(x) for x in range(-100, 0)]:
        raise AssertionError(f"{key}: the warm-up map returned a wrong result")
    times = [timed(lambda: run_map(power10, range(p["map_n"]))) for _ in range(p["repeat"])]
    r.add(key, median(times), each=times, detail=f"n={p['map_n']}, default chunksize")


def _par_pushpull(v, mec, p: dict, r: Results) -> None:
    size_mb = max(p["sizes"])
    nbytes = int(size_mb * MB)
    a = rng_array(nbytes)
    v.push(dict(a=a), block=True)
    _check_equal(v.pull("a", block=True), a, "DirectView push+pull")
    mine, theirs = [], []
    for _ in range(p["repeat"]):  # interleaved: the same noise for both
        t = timed(lambda: v.push(dict(a=a), block=True)) + timed(lambda: v.pull("a", block=True))
        mine.append(2 * nbytes / t / MB)
        t = (timed(lambda: mec.push(dict(a=a), targets=0))
             + timed(lambda: mec.pull("a", targets=0)))
        theirs.append(2 * nbytes / t / MB)
    v.execute("del a", block=True)
    r.add("par_pushpull", median(mine), each=mine, detail=f"{size_mb:g} MB float64")
    r.add("par_pushpull_vs_mec", median(mine) / median(theirs),
          detail=f"mec.push+pull of the same, interleaved: {median(theirs):.0f} MB/s")


def engine_memory_probe() -> tuple[float, list[float], int]:
    """(On an engine) its private dirty MB after a full collection, the
    milliseconds of 5 more, and the objects the collector tracks."""
    import gc

    gc.collect()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t0) * 1e3)
    private = 0.0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                private = int(line.split()[1]) / 1024
    return private, times, len(gc.get_objects())


def _engine_memory(rc, r: Results) -> None:
    probes = rc[:].apply_sync(engine_memory_probe)
    private = [m for m, _, _ in probes]
    times = [t for _, ts, _ in probes for t in ts]
    r.add("engine_private", sum(private) / len(private), each=private,
          detail=f"{len(probes)} engines forked by the fork server")
    r.add("engine_gc", median(times), each=times,
          detail=f"objects tracked: {', '.join(str(n) for _, _, n in probes)}")


def dag_depth(edges: list[list[int]]) -> int:
    """The number of tasks on the longest path of the DAG ``edges`` describes."""
    depth: list[int] = []
    for deps in edges:
        depth.append(1 + max((depth[j] for j in deps), default=0))
    return max(depth, default=0)


def _par_dag(rc, lv, n: int, r: Results, window: int | None = None) -> None:
    edges = dag_edges(n, window=window)
    t0 = time.perf_counter()
    ars = []
    for deps in edges:
        lv.after = [ars[j] for j in deps] or None
        ars.append(lv.apply_async(noop))
    lv.after = None
    t1 = time.perf_counter()
    if not rc.wait(ars, timeout=600):
        raise RuntimeError("the DAG did not finish in 600 s")
    elapsed = time.perf_counter() - t0
    for ar, deps in zip(ars[-50:], edges[-50:], strict=True):  # a check of the order
        started = ar.metadata.started
        if any(ars[j].metadata.completed > started for j in deps):
            raise AssertionError("a task of the DAG started before one it depends on ended")
    r.add("par_dag" if window is None else "par_dag_deep", n / elapsed,
          detail=f"{n} tasks, 3 dependencies each (after=), longest path {dag_depth(edges)} "
                 f"tasks; submitting {n / (t1 - t0):.0f}/s")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _par_hub(cluster, p: dict, r: Results) -> None:
    import datetime
    import json

    import plait.parallel as ipp

    state = json.loads((cluster.plait_dir / "profile_default" / "run" / "ipcluster.json")
                       .read_text())
    controller = state["controller"]
    rc = ipp.Client(cluster.furl("client"))
    lv = rc.load_balanced_view()
    rc.wait([lv.apply_async(noop) for _ in range(100)])
    idle = _rss_mb(controller)
    start = datetime.datetime.now()
    n, done = p["hub_results"], 0
    while done < n:
        batch = min(10_000, n - done)
        if not rc.wait([lv.apply_async(noop) for _ in range(batch)], timeout=600):
            raise RuntimeError("the hub tasks did not finish in 600 s")
        rc.purge_local_results("all")  # the client's memory is not the figure
        done += batch
    grown = _rss_mb(controller) - idle
    rows = None

    def query() -> None:
        nonlocal rows
        rows = rc.db_query({"submitted": {"$gte": start}}, keys=["msg_id", "engine_id"])

    times = [timed(query) for _ in range(3)]
    if rows is None or len(rows) != n:
        raise AssertionError(f"db_query found {0 if rows is None else len(rows)} of {n} records")
    rc.close()
    r.add("par_hub_rss", grown, detail=f"controller RSS {idle:.0f} MB idle, "
          f"{idle + grown:.0f} MB after {n} results (SQLite hub)")
    r.add("par_hub_query", median(times),
          detail=f"db_query of all {n} records by submitted time, keys msg_id and engine_id")


SECTIONS = {"foundation": foundation, "multiengine": multiengine, "task": task,
            "parallel": parallel}


def main_child(params: dict, results: Results) -> None:
    SECTIONS[params["what"]](params, results)


if __name__ == "__main__":
    child_main(main_child)
