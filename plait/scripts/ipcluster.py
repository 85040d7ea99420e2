"""``ipcluster``: a controller and engines, with one command.

``ipcluster start -n 4`` (or ``ipcluster -n 4``) runs a controller and four
engines in the foreground until Ctrl-C.  With ``--daemonize`` it returns as
soon as every engine is registered (exit 0), or fails after ``--timeout``
seconds, leaving nothing running.  ``--engines=mpi`` starts the engines as
one ``mpiexec -n 4`` job.  ``ipcluster engines -n 2`` adds engines to the
running cluster of a profile, ``ipcluster list`` shows the running clusters
and ``ipcluster stop`` ends one.  ``ipcluster enroll -n 2 --file=F`` issues
one-time enrollment secrets, for engines started by hand (``ipengine
--enroll-file=F``) with a controller that admits enrolled engines only, as
the controllers ipcluster starts do.  Options may also come from the profile's
``cluster.toml`` (see :mod:`plait.cluster.config`); flags override it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time

from plait.cluster.config import (
    CONTROLLER_OPTIONS,
    batch_options,
    controller_options,
    load_config,
    read_hosts,
    ssh_options,
)
from plait.cluster.control import ClusterProcesses, forget_secrets
from plait.cluster.launchers import LAUNCHERS
from plait.cluster.processes import (  # noqa: F401 (re-exported)
    pid_alive,
    start_time,
    terminate,
    wait_for_exit,
)
from plait.cluster.state import STATE_FILE, clear_state, ours, read_state, running_clusters
from plait.scripts._common import add_profile_option, dirs_for
from plait.wire.errors import ClusterError, PlaitError

__all__ = ["STATE_FILE", "main", "pid_alive", "start_time", "terminate"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipcluster",
        description="Start, grow, list or stop plait clusters.",
        epilog="'ipcluster -n 4' is short for 'ipcluster start -n 4'.",
    )
    sub = p.add_subparsers(dest="command")
    start = sub.add_parser("start", help="start a controller and engines")
    add_profile_option(start)
    _engine_options(start)
    start.add_argument("--daemonize", action="store_true",
                       help="return once the engines are ready; stop with 'ipcluster stop'")
    for opt in ("--ip", "--location", "--scheme", "--db", "--status-ip"):
        start.add_argument(opt, default=None, help=f"passed to ipcontroller {opt}")
    for opt in ("--hwm", "--client-port", "--engine-port", "--client-channel-port",
                "--engine-channel-port", "--data-port", "--status-port"):
        start.add_argument(opt, type=int, default=None, help=f"passed to ipcontroller {opt}")
    start.add_argument("--engine-timeout", type=int, default=None,
                       help="passed to ipcontroller --engine-timeout")
    start.add_argument("--controller", choices=("local", "ssh", "slurm"), default=None,
                       help="where the controller runs: on this host (local, the default), "
                            "on --controller-host, started over SSH, or in the Slurm job "
                            "of the engines (with --engines=slurm)")
    start.add_argument("--controller-host", default=None, metavar="USER@HOST",
                       help="the host of a controller started over SSH")
    start.add_argument("--restart-engines", action="store_true", default=None,
                       help="replace an engine (of this host or an SSH host) that dies by "
                            "a new one with its id (its namespace starts empty)")
    start.add_argument("--engine-memory-limit", type=float, default=None, metavar="MB",
                       help="an engine whose resident memory passes MB exits, saying why "
                            "(and is replaced with --restart-engines)")
    start.add_argument("--restart-controller", action=argparse.BooleanOptionalAction,
                       default=None,
                       help="start the controller again when it dies, on the same ports "
                            "and FURLs, so that engines and clients rejoin it (default: on)")
    start.add_argument("--engine-reconnect", type=float, default=None, metavar="SECONDS",
                       help="how long an engine that lost its controller tries to join it "
                            "again, keeping its id and namespace (default 60; 0: it exits)")
    start.add_argument("--tunnel", action="store_true", default=None,
                       help="clients and engines reach the remote controller through SSH "
                            "tunnels to its host (it may then listen on its 127.0.0.1)")
    engines = sub.add_parser("engines", help="add engines to a running cluster")
    add_profile_option(engines)
    _engine_options(engines)
    stop = sub.add_parser("stop", help="stop the cluster of a profile")
    add_profile_option(stop)
    sub.add_parser("list", help="list the running clusters (of $PLAIT_DIR)")
    enroll = sub.add_parser(
        "enroll", help="issue one-time enrollment secrets for engines started by hand",
        description="Write N one-time enrollment secrets to a new private file: an engine "
                    "started with 'ipengine --enroll-file=FILE' takes one (the line of its "
                    "rank under MPI or a batch job, else the first left) and is admitted "
                    "by a controller of the profile that admits enrolled engines only.")
    add_profile_option(enroll)
    enroll.add_argument("-n", type=int, default=1, help="how many secrets (default 1)")
    enroll.add_argument("--file", required=True, metavar="PATH",
                        help="the secrets file to write (it must not exist yet)")
    return p


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--n", type=int, default=None, dest="n",
                   help="number of engines (default: cluster.toml's, or the number of CPUs)")
    p.add_argument("--engines", choices=LAUNCHERS, default=None,
                   help="how engines start: on this host (local, the default) or as one "
                        "mpiexec job (mpi)")
    p.add_argument("--mpiexec", default=None, help="the MPI launcher command (default mpiexec)")
    p.add_argument("--mpi-args", default=None,
                   help="extra arguments for mpiexec, as one string (e.g. '--oversubscribe')")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for the engines to be ready (default 30)")
    p.add_argument("--hosts", default=None,
                   help="SSH engines: a hosts file (lines 'HOST [ENGINES]') or "
                        "'host1:2,host2:4'")
    p.add_argument("--ssh-args", default=None,
                   help="extra arguments for ssh, as one string (e.g. '-i ~/.ssh/lab_key')")
    p.add_argument("--partition", default=None,
                   help="batch engines: the partition (Slurm) or queue (SGE, PBS, LSF)")
    p.add_argument("--account", default=None, help="batch engines: the account to charge")
    p.add_argument("--walltime", default=None,
                   help="batch engines: the job's time limit, as the scheduler writes it")


def _config(args: argparse.Namespace) -> tuple[ClusterProcesses, int, float]:
    dirs = dirs_for(args.profile)
    flags = {name: getattr(args, name, None) for name in CONTROLLER_OPTIONS}
    config = load_config(dirs.root).with_overrides(
        n=args.n, engines=args.engines, timeout=args.timeout, mpiexec=args.mpiexec,
        mpi_args=None if args.mpi_args is None else tuple(shlex.split(args.mpi_args)),
        ssh_hosts=_hosts(args.hosts),
        ssh_args=None if args.ssh_args is None else tuple(shlex.split(args.ssh_args)),
        partition=args.partition, account=args.account, walltime=args.walltime,
        controller_launcher=getattr(args, "controller", None),
        controller_host=getattr(args, "controller_host", None),
        tunnel=getattr(args, "tunnel", None),
        restart_engines=getattr(args, "restart_engines", None),
        engine_memory_limit=getattr(args, "engine_memory_limit", None),
        restart_controller=getattr(args, "restart_controller", None),
        engine_reconnect=getattr(args, "engine_reconnect", None), **flags)
    n = config.n if config.n is not None else (
        sum(config.ssh_hosts.values()) if config.engines == "ssh" else (os.cpu_count() or 2))
    procs = ClusterProcesses(args.profile, controller_args=config.controller_args(),
                             launcher=config.engines, mpiexec=config.mpiexec,
                             mpi_args=config.mpi_args, detach=getattr(args, "daemonize", True),
                             ssh=ssh_options(config), batch=batch_options(config),
                             **controller_options(config))
    return procs, n, config.timeout


def _hosts(text: str | None) -> dict[str, int] | None:
    """``--hosts``: a hosts file, or ``host1:2,host2`` (one engine when no count)."""
    if text is None:
        return None
    if os.path.exists(text):
        return read_hosts(text)
    table: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        host, _, count = item.partition(":")
        if count and not count.isdigit():
            raise ClusterError(f"--hosts: {item!r} is not HOST or HOST:ENGINES")
        table[host] = table.get(host, 0) + (int(count) if count else 1)
    return table


def _connect_hint(profile: str | None) -> str:
    profile_arg = f"profile={profile!r}" if profile else ""
    return (f"connect with:\n"
            f"    from plait.kernel import client\n"
            f"    mec = client.MultiEngineClient({profile_arg})\n"
            f"    tc = client.TaskClient({profile_arg})\n"
            f"or, the later generation (as ipyparallel):\n"
            f"    import plait.parallel as ipp\n"
            f"    rc = ipp.Client({profile_arg})")


def cmd_start(args: argparse.Namespace) -> int:
    try:
        procs, n, timeout = _config(args)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if n < 1:
        print("error: -n must be at least 1", file=sys.stderr)
        return 2
    if read_state(procs.dirs):
        print(f"error: a cluster is already running for profile "
              f"'{args.profile or 'default'}'; stop it with 'ipcluster stop'", file=sys.stderr)
        return 1
    if not args.daemonize:
        procs.extra_state["ipcluster"] = os.getpid()
    started = time.monotonic()
    # From here on, Ctrl-C or SIGTERM at any moment stops what was started.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        ids = procs.start(n, timeout)
        print(f"plait cluster ready: controller and {len(ids)} engines {ids} "
              f"in {time.monotonic() - started:.2f} s\n" + _connect_hint(args.profile),
              flush=True)
        status_url = procs.dirs.security / "ipcontroller-status.url"
        if status_url.exists():
            print(f"status page: {status_url.read_text().strip()}", flush=True)
        if args.daemonize:
            print("stop it with: ipcluster stop"
                  + (f" --profile={args.profile}" if args.profile else ""), flush=True)
            return 0
        print("press Ctrl-C to stop the cluster", flush=True)
        if procs.controller_proc is not None:
            procs.controller_proc.wait()
            if procs.keeper_pid is not None:  # it starts the controller again, until it
                wait_for_exit(procs.keeper_pid)  # gives up or the controller stops cleanly
        else:  # on another host, or in a batch job: asked now and then
            while procs.running():
                time.sleep(REMOTE_CHECK_EVERY)
        print("the controller exited; stopping the engines", flush=True)
        code = 0
    except (PlaitError, OSError) as exc:  # ClusterError, or a tunnel that cannot open
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 0 if procs.controller_pid is not None or procs.allocation is not None else 130
    # Only the foreground or a failed start gets here: stop everything.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        procs.stop()
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if code == 0:
        print("plait cluster stopped", flush=True)
    return code


#: Seconds between asking whether a controller of another host still runs (foreground).
REMOTE_CHECK_EVERY = 5.0


def _interrupt(*args: object) -> None:
    raise KeyboardInterrupt


def cmd_engines(args: argparse.Namespace) -> int:
    try:
        procs = ClusterProcesses.attach(args.profile)
        given, n, timeout = _config(args)
        if args.n is None:
            n = 1  # one more engine, unless -n says otherwise
        # options given now win over those the cluster started with
        if args.hosts is not None or args.ssh_args is not None:
            procs.ssh.update({k: v for k, v in given.ssh.items()
                              if k in ("hosts", "args") and v})
        procs.batch.update(given.batch)
        if args.mpiexec is not None or args.mpi_args is not None:
            procs.mpiexec, procs.mpi_args = given.mpiexec, given.mpi_args
        ids = procs.add_engines(n, timeout, launcher=args.engines or procs.launcher)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"added {len(ids)} engines {ids} to the cluster of profile "
          f"'{args.profile or 'default'}'", flush=True)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    clusters = running_clusters()
    if not clusters:
        print("no cluster is running")
        return 0
    print(f"{'profile':<16} {'controller':>10} {'engines':>7}  launcher")
    for state in clusters:
        alive = [p for p in state.get("engines", []) if ours(state, p)]
        engines = len(alive) if state.get("engines") else sum(
            len(g.get("ids", [])) for g in state.get("engine_sets", []))
        controller = state["controller"]
        if state.get("remote"):
            controller = f"{state['remote']['pid']}@{state['remote']['host']}"
        elif state.get("allocation"):
            controller = f"job {state['allocation']['job']}"
        print(f"{state['profile']:<16} {controller!s:>10} {engines:>7}  "
              f"{state.get('launcher', 'local')}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    dirs = dirs_for(args.profile)
    state = read_state(dirs)
    if state is None:
        print(f"no cluster is running for profile '{args.profile or 'default'}'", file=sys.stderr)
        clear_state(dirs)
        return 1
    procs = ClusterProcesses.attach(args.profile)  # (local pids not ours any more dropped)
    if procs.keeper_pid is not None:  # first: it would start the controller again
        terminate([procs.keeper_pid])
        state = read_state(dirs) or state  # (the controller it started last, if any)
    for group in procs.engine_sets:
        group.stop()  # this host's, mpiexec's, over SSH, or the batch job cancelled
    if procs.remote is not None and not procs.remote.stop():  # over SSH, on its host
        print(f"error: could not reach {procs.remote.host} over SSH to stop the controller "
              f"there (pid {procs.remote.pid}); the state is kept: try again",
              file=sys.stderr)
        return 1
    if procs.allocation is not None:
        procs.allocation.job.cancel()
        procs.allocation.ready.unlink(missing_ok=True)
    # the controller and a foreground ipcluster; never the Python process of a Cluster
    terminate([p for p in (state["controller"], state.get("ipcluster"))
               if p and p != os.getpid() and ours(state, p)])
    forget_secrets(dirs)
    clear_state(dirs)
    print("plait cluster stopped")
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from pathlib import Path

    from plait.security import enrollment_key
    from plait.wire import enrollment

    if not 1 <= args.n <= 100_000:
        print(f"error: -n is a number of engines from 1 to 100000, not {args.n}",
              file=sys.stderr)
        return 2
    dirs = dirs_for(args.profile)
    try:
        enrollment.write_secrets(Path(args.file), enrollment.issue(enrollment_key(dirs), args.n))
    except FileExistsError:
        print(f"error: {args.file} exists: give a new file (secrets are never added to an "
              f"old one)", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: cannot issue secrets: {exc}", file=sys.stderr)
        return 1
    print(f"{args.n} one-time enrollment secret{'s' if args.n != 1 else ''} in {args.file}; "
          f"start each engine with: ipengine{_profile_flag(args.profile)} "
          f"--enroll-file={args.file} (under MPI or in a batch job, each rank its own line: "
          f"add --enroll-slot=rank)")
    return 0


def _profile_flag(profile: str | None) -> str:
    return f" --profile={profile}" if profile else ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("start", "stop", "engines", "list", "enroll", "-h",
                                   "--help"):
        argv.insert(0, "start")
    args = build_parser().parse_args(argv)
    command = {"stop": cmd_stop, "engines": cmd_engines, "list": cmd_list,
               "enroll": cmd_enroll}.get(args.command, cmd_start)
    return command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
