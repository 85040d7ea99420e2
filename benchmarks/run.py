"""plait's performance suite: figures, the machine's limits and the peers, in one run.

Usage::

    python benchmarks/run.py                      # everything (a few minutes)
    python benchmarks/run.py --quick              # a smoke run, small sizes and counts
    python benchmarks/run.py --only foundation,task --json figures.json
    python benchmarks/run.py --list               # what every figure means

Sections: ``foundation`` (round trip, push+pull, ipcluster start/stop),
``multiengine`` (4 engines), ``task`` (2 engines), ``parallel`` (the later
generation, ``plait.parallel``, with ipyparallel measured in the same run),
``peers`` (ipyparallel and dask doing the same, where installed).  The machine's limits (loopback TCP
round trip, one-hop TLS bandwidth, interpreter start, local map) are measured
in the same run whenever a plait section runs, and every plait figure is shown
as a ratio to its limit and to each peer's figure.

Every cluster runs in a child process with a temporary PLAIT_DIR (or
IPYTHONDIR, or dask directory) and is stopped in ``finally``; whatever a child
leaves running is found by an environment token and killed (and reported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from harness import HERE, run_child  # noqa: E402

SECTIONS = ("foundation", "multiengine", "task", "parallel", "peers")
PLAIT_SECTIONS = SECTIONS[:4]


@dataclass
class Spec:
    """One plait figure: what it is, its unit, its target and what it is compared with."""

    section: str
    key: str
    label: str
    unit: str
    target: tuple[str, float] | None = None
    limit: str | None = None  # key of a limit figure
    ref: str = ""  # the figures the issues quote
    meaning: str = ""


def catalogue(p: dict) -> list[Spec]:
    n, mb = p["map_n"], p["scatter_mb"]
    specs = [
        Spec("foundation", "rtt_one", "execute('pass', targets=0) round trip", "ms", ("<=", 1.2),
             "tcp_rtt", "ipp 4.6, ray 2.4, dask 11",
             f"median of {p['rtt_count']} blocking mec.execute('pass', targets=0) on a "
             "2-engine cluster, after 20 warm-up calls"),
    ]
    for size in p["sizes"]:
        specs.append(Spec(
            "foundation", f"pushpull_{size:g}MB", f"push+pull {size:g} MB array, 1 engine", "MB/s",
            (">=", 800.0) if size == 100 else None, "tls_bw",
            "ipp 212, dask 667, ray 669" if size == 100 else "",
            f"2 x {size:g} MB / (push time + pull time) of a float64 array to engine 0 and "
            f"back (blocking mec.push then mec.pull); median of {p['repeat']} rounds after a "
            "checked warm-up round"))
    specs += [
        Spec("foundation", "start", "ipcluster start -n 2 --daemonize until ready", "s",
             ("<=", 1.0), "py_start", "ipp 7.2",
             "wall time of the ipcluster command (it returns once both engines are "
             f"registered), interpreter start included; median of {p['cycles']} cycles"),
        Spec("foundation", "stop", "ipcluster stop (processes gone)", "s", ("<=", 0.5), "py_stop",
             "ipp 5.8", "wall time of 'ipcluster stop' (it waits for the processes to exit; "
             "the run checks none is left)"),
        Spec("multiengine", "execute_all", "execute('pass') round trip, 4 engines", "ms", None,
             "tcp_rtt", "", f"median of {p['rtt_count']} blocking mec.execute('pass'), "
             "interleaved with targets=0 calls on the same cluster"),
        Spec("multiengine", "execute_all_vs_one", "execute on 4 engines / on 1 engine", "x",
             ("<=", 2.0), None, "", "ratio of the two interleaved medians above"),
        Spec("multiengine", "dv_map", f"mec.map(lambda x: x**10, range({n}))", "s", None,
             "local_map", "", f"blocking mec.map on 4 engines; median of {p['repeat']} "
             "after a checked warm-up"),
        Spec("multiengine", "dv_map_vs_ipp", "mec.map / ipyparallel DirectView.map_sync", "x",
             ("<=", 2.0), None, "", "plait's dv_map over ipyparallel's rc[:].map_sync of the "
             "same lambda and range, measured in this run"),
        Spec("multiengine", "scatter_gather", f"scatter+gather {mb:g} MB float64, 4 engines",
             "MB/s", (">=", 800.0) if mb == 100 else None, "tls_bw", "",
             f"2 x {mb:g} MB / (scatter time + gather time), blocking; median of "
             f"{p['repeat']} after a checked warm-up"),
        Spec("task", "task_latency", "one no-op MapTask: run -> result", "ms", ("<=", 1.5),
             "tcp_rtt", "", f"median of {p['latency_count']} tc.run(MapTask(noop)) + "
             "tc.get_task_result(id, block=True), 2 engines"),
        Spec("task", "task_rate", "no-op MapTask: tc.run x N + tc.barrier", "tasks/s",
             (">=", 3000.0), None, "ipp 252, dask 513, ray 1216",
             f"N={p['tasks']} tasks submitted one by one with tc.run, then tc.barrier(ids); "
             f"N / elapsed, median of {p['rate_rounds']} rounds, 2 engines"),
        Spec("task", "task_rate_string", "no-op StringTask('pass'): run x N + barrier",
             "tasks/s", None, None, "", "as task_rate, with StringTask('pass')"),
        Spec("task", "task_map", f"tc.map(lambda x: x**10, range({n})), defaults", "s",
             ("<=", 0.5) if n == 10_000 else None, "local_map",
             "ipp 40.8 (chunksize 1)" if n == 10_000 else "",
             f"blocking tc.map with default settings, 2 engines; median of {p['repeat']}"),
        Spec("task", "task_uneven", "tc.map of uneven sleeps: makespan / ideal", "x", None, None,
             "", "tc.map(sleep_for, [0.1]*8 + [0.01]*24 (x scale)) on 2 engines; ideal = "
             "max(total / 2, longest task); 1.0 is perfect balance, a static split gives 1.7"),
    ]
    return specs + _parallel_specs(p)


def _parallel_specs(p: dict) -> list[Spec]:
    n, size = p["map_n"], max(p["sizes"])
    return [
        Spec("parallel", "par_rtt", "rc[0].apply_sync(noop) round trip", "ms", ("<=", 0.8),
             "tcp_rtt", "", f"median of {p['rtt_count']} blocking DirectView.apply_sync of a "
             "no-op on a 2-engine cluster with the SQLite hub, after 20 warm-up calls"),
        Spec("parallel", "par_lb_rtt", "lview.apply_sync(noop) round trip", "ms", None,
             "tcp_rtt", "", "the same through a LoadBalancedView"),
        Spec("parallel", "par_rate", "lview.apply_async(noop) x N + rc.wait", "tasks/s",
             (">=", 10_000.0), None, "ipp about 500",
             f"N={p['par_tasks']} no-op tasks submitted one by one, then rc.wait(ars); N / "
             f"elapsed, median of {p['rate_rounds']} rounds, 2 engines, SQLite hub on"),
        Spec("parallel", "par_map", f"lview.map_sync(x**10, range({n}))", "s",
             ("<=", 0.5) if n == 10_000 else None, "local_map",
             "ipp 20 (chunksize 1)" if n == 10_000 else "",
             f"blocking LoadBalancedView.map_sync with the default chunksize, 2 engines; "
             f"median of {p['repeat']}"),
        Spec("parallel", "par_pushpull", f"DirectView push+pull {size:g} MB array", "MB/s",
             None, "tls_bw", "", f"2 x {size:g} MB / (rc[0].push + rc[0].pull time), "
             f"blocking; median of {p['repeat']} rounds interleaved with mec's"),
        Spec("parallel", "par_pushpull_vs_mec", "DirectView push+pull / mec push+pull", "x",
             (">=", 0.95), None, "", "the rate above over mec.push + mec.pull of the same "
             "array on the same engine, interleaved round by round (1.0: as fast; the "
             "target allows 5% of noise)"),
        Spec("parallel", "par_dag", f"a DAG of {p['dag_n']} tasks, 3 dependencies each",
             "tasks/s", (">=", 5000.0) if p["dag_n"] >= 10_000 else None, None, "",
             "each task depends (after=) on 3 random earlier tasks (the random DAG of the "
             "NetworkX demo); N / the time from the first submission to the last result, "
             "2 engines"),
        Spec("parallel", "par_dag_deep", f"a deep DAG of {p['dag_n']} tasks, 3 dependencies "
             "each", "tasks/s", None, None, "",
             "each task depends on 3 of the 64 tasks just before it: a long chain of "
             "levels, each waiting for a result to come back from an engine; N / elapsed"),
        Spec("parallel", "cluster_start4", "Cluster(n=4).start_and_connect() to a usable client",
             "s", ("<=", 0.6), "py_start", "dask about 0.4, ipp 6.5",
             "from the Cluster() call to a connected Client that sees the 4 engines (an "
             "existing profile: its certificates made by a first, untimed cycle); median of "
             f"{p['cycles']} start/stop cycles"),
        Spec("parallel", "scale_register", f"{p['scale_engines']} local engines registered",
             "s", ("<=", 30.0) if p["scale_engines"] >= 256 else None, None, "",
             "Cluster(n=N).start_and_connect() on this 2-core machine, to a client seeing "
             "every engine"),
        Spec("parallel", "scale_execute", f"mec.execute('pass') on {p['scale_engines']} "
             "engines", "ms", ("<=", 50.0) if p["scale_engines"] >= 256 else None, None, "",
             "one command to every engine and every reply back; median of 10"),
        Spec("parallel", "scale_status", f"status page data with {p['scale_engines']} "
             "engines", "ms", ("<=", 250.0) if p["scale_engines"] >= 256 else None, None, "",
             "GET status.json (what the page's script reads, every engine's row) with every "
             "engine registered; median of 5"),
        Spec("parallel", "sim_register", f"{p['sim_engines']} simulated engines registered",
             "s", None, None, "",
             "engines simulated at the protocol level (4 processes, one TLS connection "
             "each; every engine a real foolscap engine object, registered and commanded "
             "for real): from the first process started to every engine registered"),
        Spec("parallel", "sim_execute", f"mec.execute('pass') on {p['sim_engines']} "
             "simulated engines", "ms", None, None, "",
             "one command to every engine and every reply back; median of 5"),
        Spec("parallel", "sim_rate_ratio", f"task rate, {p['sim_engines']} engines / "
             f"{max(50, p['sim_engines'] // 10)}", "x", (">=", 0.8), None, "",
             "lview.apply_async(noop) x N + rc.wait with that many simulated engines over "
             "the same with a tenth as many: the cost per task must not grow with the "
             "engines (best of rate_rounds each; with many idle engines each task travels "
             "alone, so the base is many engines too)"),
        Spec("parallel", "sim_rss_engine", "controller memory per registered engine", "KB",
             ("<=", 100.0), None, "",
             "(controller RSS with N simulated engines - with N/10) / (N - N/10)"),
        Spec("parallel", "engine_restart", "a killed engine replaced, under its id", "s",
             None, None, "",
             "Cluster(n=2, restart_engines=True): from SIGKILL of engine 1 to the new engine "
             "1 answering an apply; median of 5"),
        Spec("parallel", "controller_restart", "a killed controller back, engines rejoined",
             "s", ("<=", 5.0), None, "",
             "Cluster(n=4) with 200 tasks queued: from SIGKILL of the controller to the "
             "client seeing the 4 engines again under their ids and namespaces (the keeper "
             "starts the controller again); median of 3"),
        Spec("parallel", "chaos_lost", "chaos: tasks lost or wrong", "tasks", ("<=", 0.0),
             None, "", "20,000 tasks of both generations with retries on 4 restarted "
             "engines while 4 engines and the controller twice are SIGKILLed"),
        Spec("parallel", "chaos_recover", "chaos: a controller SIGKILL to the engines back",
             "s", ("<=", 5.0), None, "", "during the chaos run; median of the 2 kills"),
        Spec("parallel", "status_open_rate", "task rate, status page open / closed", "x",
             (">=", 0.9), None, "", "lview.apply_async x N + rc.wait with the page open in "
             "headless chromium (without chromium: its event stream read by a client) over "
             "the same without, rounds interleaved; 64 engines (4 with --quick)"),
        Spec("parallel", "status_page_cpu", "controller CPU of an open status page", "%",
             ("<=", 5.0), None, "", "the controller's CPU with the page open minus "
             "without, engines idle, 3 s spans; 64 engines (4 with --quick)"),
        Spec("parallel", "ssh_start64", "64 engines over SSH on 3 hosts, ready", "s",
             ("<=", 5.0) if p["hub_results"] >= 100_000 else None, None, "",
             "Cluster(engines='ssh') on 3 network-namespace hosts with real sshd, to a "
             "client seeing every engine (root only: skipped otherwise)"),
        Spec("parallel", "slurm_ready", "Slurm engines registered after the job starts", "s",
             ("<=", 2.0), None, "",
             "from the job's first line (its start) to its 4 engines registered, on real "
             "slurmctld/slurmd of this machine (root only: skipped otherwise)"),
        Spec("parallel", "engine_private", "an engine's private memory, idle", "MB", None,
             None, "", "Private_Dirty of /proc/PID/smaps_rollup of each engine of a 2-engine "
             "local cluster (forked by the fork server) after a full collection; mean"),
        Spec("parallel", "engine_gc", "a full garbage collection in an idle engine", "ms",
             None, None, "", "gc.collect() on each engine of that cluster, timed there; "
             "median of 5 a engine"),
        Spec("parallel", "par_hub_rss", f"controller RSS growth after {p['hub_results']} "
             "results", "MB", ("<=", 300.0) if p["hub_results"] >= 100_000 else None, None,
             "", "controller RSS after that many no-op tasks finished (SQLite hub, records "
             "kept) minus its RSS once idle after 100 tasks"),
        Spec("parallel", "par_hub_query", f"db_query over {p['hub_results']} records", "s",
             ("<=", 0.5) if p["hub_results"] >= 100_000 else None, None, "",
             "rc.db_query({'submitted': {'$gte': start}}, keys=['msg_id', 'engine_id']) "
             "answering every record; median of 3"),
        Spec("parallel", "queued_rss", f"controller RSS with {p['queued_tasks']} tasks queued",
             "MB", ("<=", 1500.0) if p["queued_tasks"] >= 1_000_000 else None, None, "",
             "lview.apply_async(noop) x N from one client while both engines are busy (a "
             "pinned task each): the controller's RSS once all are sent"),
        Spec("parallel", "queued_rate", f"{p['queued_tasks']} queued tasks run", "tasks/s",
             (">=", 10_000.0) if p["queued_tasks"] >= 1_000_000 else None, None, "",
             "N / the time from the engines freed to every result back (rc.wait), 2 engines"),
        Spec("parallel", "queued_rss_purged", "controller RSS once those results are purged",
             "MB", None, None, "", "after rc.purge_everything()"),
        Spec("parallel", "queued_status", f"status page data with {p['queued_tasks']} tasks "
             "recorded", "ms", ("<=", 250.0) if p["queued_tasks"] >= 1_000_000 else None, None,
             "", "GET status.json once those tasks ran (the hub keeps their records); "
             "median of 5"),
        Spec("parallel", "queued_history", f"status page search with {p['queued_tasks']} "
             "tasks recorded", "ms", ("<=", 1000.0) if p["queued_tasks"] >= 1_000_000 else None,
             None, "", "GET history.json (the page's searchable history: all, failed, one "
             "engine's), the slowest of the three; median of 5 each"),
    ]


LIMITS = {
    "tcp_rtt": ("loopback TCP round trip, Python, 1 hop", "ms"),
    "tcp_rtt_relay": ("loopback TCP round trip via a relay (2 hops)", "ms"),
    "tls_bw": ("TLS one hop, Python ssl, loopback", "MB/s"),
    "py_start": ("python -c pass", "s"),
    "py_stop": ("python -c pass + SIGTERM and reap 3 idle interpreters", "s"),
    "local_map": ("local serial map(lambda x: x**10, ...)", "s"),
}


def params_for(args: argparse.Namespace) -> dict:
    quick = args.quick
    p = dict(rtt_count=30 if quick else 300, repeat=1 if quick else 5, cycles=1 if quick else 3,
             sizes=[10.0] if quick else [10.0, 100.0], scatter_mb=10.0 if quick else 100.0,
             map_n=1000 if quick else 10_000, tasks=200 if quick else 3000,
             rate_rounds=1 if quick else 3, latency_count=30 if quick else 300,
             uneven_scale=0.2 if quick else 1.0, peer_tasks=200 if quick else 1000,
             peer_map_repeat=1, tls_mb=10.0 if quick else 100.0,
             par_tasks=500 if quick else 10_000, dag_n=500 if quick else 10_000,
             hub_results=2000 if quick else 100_000, peer_par_tasks=200 if quick else 1000,
             scale_engines=32 if quick else 256, sim_engines=500 if quick else 5000,
             queued_tasks=5000 if quick else 1_000_000)
    for name in ("rtt_count", "repeat", "cycles", "tasks", "map_n"):
        value = getattr(args, name)
        if value is not None:
            p[name] = value
    if args.sizes:
        p["sizes"] = [float(s) for s in args.sizes.split(",")]
    p["latency_count"] = p["rtt_count"]
    return p


# -- running ---------------------------------------------------------------------------------


def run_all(args: argparse.Namespace, p: dict) -> tuple[dict, list[str]]:
    """Measure what was asked; returns ``({"plait": {...}, "limits": ..., peer: ...}, notes)``."""
    only = args.only
    plait_sections = [s for s in PLAIT_SECTIONS if s in only]
    measured: dict[str, dict] = {}
    notes: list[str] = []
    timeout = args.timeout or (180 if args.quick else 900)

    def child(script: str, what: str, params: dict, grace: float = 0.0) -> dict:
        label = f"{Path(script).stem} {what}"
        print(f"  running {label} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        figures, note = run_child([str(HERE / script), what, "--params", json.dumps(params)],
                                  timeout, label, grace=grace, verbose=args.verbose)
        print(f"  ... {label} took {time.perf_counter() - t0:.1f} s", file=sys.stderr,
              flush=True)
        if note:
            notes.append(note)
        figures = figures or {"_section": {"error": note or "the child wrote no figures"}}
        section_error = figures.pop("_section", None)
        if section_error:
            notes.append(f"{label}: {section_error.get('error')}")
            figures["_error"] = section_error.get("error")
        return figures

    if plait_sections:
        # multiprocessing's resource tracker outlives the limits child by a moment
        measured["limits"] = child("limits.py", "all", p, grace=5.0)
    measured["plait"] = {}
    for section in plait_sections:
        for key, fig in child("plait_bench.py", section, p).items():
            measured["plait"][f"{section}.{key}" if key != "_error" else f"{section}._error"] = fig
    wanted = [s.key for s in catalogue(p) if s.section in (plait_sections or PLAIT_SECTIONS)
              and not s.key.endswith(("_vs_one", "_vs_ipp", "_vs_mec"))]
    parallel_ops = [s.key for s in catalogue(p) if s.section == "parallel"
                    and s.key in peers.PARALLEL]
    for peer in peers.PEERS:
        version = peers.installed(peer)
        if "peers" in only:
            ops = wanted
        elif peer == "ipyparallel" and ("multiengine" in only or "parallel" in only):
            # those sections compare with it in the same run
            ops = (["dv_map"] if "multiengine" in only else []) + (
                parallel_ops if "parallel" in only else [])
        elif peer == "dask" and "parallel" in only:
            ops = ["cluster_start4"]
        else:
            continue
        if version is None:
            notes.append(f"peer {peer}: not installed, skipped "
                         f"(pip install ipyparallel dask distributed)")
            continue
        measured[peer] = child("peers.py", peer, dict(p, ops=ops, tasks=p["peer_tasks"]),
                               grace=15.0)
        measured[peer]["_version"] = version
        if peer == "ipyparallel" and not version.startswith("9.2"):
            notes.append(f"ipyparallel {version} is not the issues' reference 9.2")
    if "peers" in only:
        ray = "installed but" if peers.installed("ray") else "not installed, and"
        notes.append(f"peer ray: {ray} not measured by this suite (the issues quote its figures)")
    return measured, notes


# -- the table --------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def passes(value: float | None, target: tuple[str, float] | None) -> str:
    if target is None or value is None:
        return "-"
    op, bound = target
    return "PASS" if (value <= bound if op == "<=" else value >= bound) else "FAIL"


def build_rows(p: dict, measured: dict, only: list[str]) -> list[dict]:
    plait = measured.get("plait", {})
    limits = measured.get("limits", {})
    peer_names = [name for name in peers.PEERS if name in measured]
    rows = []

    def value_of(figures: dict, key: str) -> float | None:
        return figures.get(key, {}).get("value")

    ipp_map = value_of(measured.get("ipyparallel", {}), "dv_map")
    if value_of(plait, "multiengine.dv_map") is not None and ipp_map:
        plait["multiengine.dv_map_vs_ipp"] = {
            "value": plait["multiengine.dv_map"]["value"] / ipp_map,
            "detail": f"ipyparallel rc[:].map_sync: {ipp_map:.4g} s"}
    elif "ipyparallel" not in measured:
        plait.setdefault("multiengine.dv_map_vs_ipp",
                         {"skip": "ipyparallel is not installed or not measured in this run"})
    else:
        why = _status(measured["ipyparallel"].get("dv_map", {"error": "not measured"}))
        plait.setdefault("multiengine.dv_map_vs_ipp", {"error": f"no ipyparallel figure ({why})"})
    for key, (label, unit) in LIMITS.items():
        if key in limits:
            fig = limits[key]
            rows.append(dict(section="limits", key=key, label=label, unit=unit,
                             value=fig.get("value"), detail=fig.get("detail", ""),
                             status=_status(fig)))
    for spec in catalogue(p):
        if spec.section not in only:
            continue
        fig = plait.get(f"{spec.section}.{spec.key}")
        if fig is None:
            fig = {"error": plait.get(f"{spec.section}._error") or "not measured"}
        value = fig.get("value")
        row = dict(section=spec.section, key=spec.key, label=spec.label, unit=spec.unit,
                   value=value, target=spec.target, limit_key=spec.limit, ref=spec.ref,
                   meaning=spec.meaning, detail=fig.get("detail", ""), each=fig.get("each"),
                   status=_status(fig), result=passes(value, spec.target))
        limit = value_of(limits, spec.limit) if spec.limit else None
        row["vs_limit"] = value / limit if value is not None and limit else None
        for peer in peer_names:
            other = value_of(measured[peer], spec.key)
            row[f"vs_{peer}"] = value / other if value is not None and other else None
        rows.append(row)
    for peer in peer_names:
        version = measured[peer].get("_version", "")
        for spec in catalogue(p):
            fig = measured[peer].get(spec.key)
            if fig is None or "peers" not in only and spec.key != "dv_map" and not (
                    spec.section == "parallel" and "parallel" in only):
                continue
            template = peers.LABELS[peer].get(spec.key.split("_")[0] if spec.key.startswith(
                "pushpull_") else spec.key, spec.label)
            size = spec.key[9:-2] if spec.key.startswith("pushpull_") else f"{p['scatter_mb']:g}"
            label = template.format(n=p["map_n"], size=f"{size} MB")
            rows.append(dict(section="peers", key=f"{peer}.{spec.key}",
                             label=f"{peer} {version}: {label}", unit=spec.unit,
                             value=fig.get("value"), detail=fig.get("detail", ""),
                             status=_status(fig)))
    return rows


def _status(fig: dict) -> str:
    if "skip" in fig:
        return f"skipped: {fig['skip']}"
    if "error" in fig:
        return f"error: {fig['error']}"
    return ""


def print_table(rows: list[dict], peer_names: list[str]) -> None:
    short = {"ipyparallel": "ipp", "dask": "dask"}
    heads = ["section", "figure", "value", "unit", "target", "/limit",
             *[f"/{short[p]}" for p in peer_names], "result"]
    table = []
    for row in rows:
        target = row.get("target")
        cells = [row["section"], row["label"], fmt(row["value"]), row["unit"],
                 f"{target[0]} {target[1]:g}" if target else "-",
                 _ratio(row.get("vs_limit")),
                 *[_ratio(row.get(f"vs_{p}")) for p in peer_names],
                 row.get("result", "-") if not row["status"] else row["status"].split(":")[0].upper()]
        table.append(cells)
    # Leave out the comparison columns that have nothing to show.
    keep = [i for i in range(len(heads))
            if i < 4 or any(str(cells[i]) not in ("-", "") for cells in table)]
    heads = [heads[i] for i in keep]
    table = [[cells[i] for i in keep] for cells in table]
    numeric = [i for i, h in enumerate(heads) if h == "value" or h.startswith("/")]
    widths = [max(len(str(c[i])) for c in [heads, *table]) for i in range(len(heads))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    print(line(heads))
    print(line(["-" * w for w in widths]))
    section = None
    for cells in table:
        if section is not None and cells[0] != section:
            print()
        section = cells[0]
        print(line(cells))
    print("\n/limit: the figure divided by its limit in this run (times: how many times the "
          "floor;\n  rates: the fraction of the ceiling).  /ipp, /dask: plait's figure divided "
          "by the peer's\n  (times and ms: below 1 is plait faster; MB/s and tasks/s: above 1 "
          "is plait faster).")
    for row in rows:
        if row["status"]:
            print(f"  {row['section']} / {row['label']}: {row['status']}")
        elif row.get("detail"):
            print(f"  {row['section']} / {row['label']}: {row['detail']}")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{fmt(value)}x"


# -- main -------------------------------------------------------------------------------------


def meta() -> dict:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return dict(when=time.strftime("%Y-%m-%d %H:%M:%S %z"), python=platform.python_version(),
                machine=f"{platform.machine()}, {os.cpu_count()} cores", commit=git(
                    "rev-parse", "--short", "HEAD"), dirty=bool(git("status", "--porcelain")),
                load_before=os.getloadavg()[0],
                openblas={k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="plait's performance suite.")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections among {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="small sizes and counts: a smoke run")
    ap.add_argument("--repeat", type=int, help="rounds of transfers and maps (default 5)")
    ap.add_argument("--rtt-count", type=int, help="round trips per latency median (default 300)")
    ap.add_argument("--cycles", type=int, help="ipcluster start/stop cycles (default 3)")
    ap.add_argument("--tasks", type=int, help="tasks per throughput round (default 3000)")
    ap.add_argument("--map-n", type=int, help="length of the mapped range (default 10000)")
    ap.add_argument("--sizes", help="push+pull array sizes in MB (default 10,100)")
    ap.add_argument("--timeout", type=float, help="seconds allowed to each child process")
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    ap.add_argument("--list", action="store_true", help="say what each figure means and exit")
    ap.add_argument("--verbose", action="store_true", help="pass the children's stderr through")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}; choose among {', '.join(SECTIONS)}")
    p = params_for(args)
    if args.list:
        for key, (label, unit) in LIMITS.items():
            print(f"limits.{key} [{unit}]: {label}")
        for spec in catalogue(p):
            ref = f" Issue peers: {spec.ref}." if spec.ref else ""
            print(f"{spec.section}.{spec.key} [{spec.unit}]: {spec.label}: "
                  f"{spec.meaning[:1].upper()}{spec.meaning[1:]}.{ref}")
        for peer, labels in peers.LABELS.items():
            for key, label in labels.items():
                print(f"peers.{peer}.{key}: "
                      + label.format(n=p["map_n"], size="N MB"))
        return 0
    info = meta()
    print(f"plait benchmarks {'(quick) ' if args.quick else ''}{info['when']}: "
          f"{info['machine']}, Python {info['python']}, commit {info['commit']}"
          f"{' + local changes' if info['dirty'] else ''}, load {info['load_before']:.2f}",
          flush=True)
    measured, notes = run_all(args, p)
    peer_names = [name for name in peers.PEERS if name in measured]
    rows = build_rows(p, measured, args.only)
    info["load_after"] = os.getloadavg()[0]
    print()
    print_table(rows, peer_names)
    for note in notes:
        print(f"note: {note}")
    print(f"load average (1 min) before {info['load_before']:.2f}, after "
          f"{info['load_after']:.2f} on {os.cpu_count()} cores"
          + ("; the machine was busy: figures are noisy" if max(
              info["load_before"], info["load_after"]) > 1.0 else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(
            dict(meta=info, params=p, sections=args.only, rows=rows, notes=notes,
                 peers={n: measured[n].get("_version") for n in peer_names}), indent=1))
        print(f"wrote {args.json}")
    failed = any(r["status"].startswith("error") for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
