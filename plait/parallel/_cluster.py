"""``Cluster``: start, grow and stop a cluster from Python, as ipyparallel users do.

::

    with ipp.Cluster(n=4) as rc:            # a controller and 4 engines, then a Client
        rc[:].apply_sync(os.getpid)

    cluster = ipp.Cluster(n=8, engines="mpi")   # one mpiexec -n 8 job
    rc = cluster.start_and_connect()            # once the 8 engines are registered
    cluster.add_engines(2)
    cluster.stop()

    cluster = await ipp.AsyncCluster(n=4).start()   # from asyncio code

A Cluster starts the same processes as ``ipcluster start --daemonize`` (see
:mod:`plait.cluster.control`) and records them in the profile's state file,
so ``ipcluster list`` and ``ipcluster stop`` see it, and
``Cluster.from_profile()`` finds it from another process.  Options not
given come from the profile's ``cluster.toml``.  A cluster a Python process
started is stopped when that process exits, unless ``shutdown_atexit=False``.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import weakref
from typing import Any

from plait.cluster.config import (
    CONTROLLER_OPTIONS,
    CONTROLLERS,
    batch_options,
    controller_options,
    load_config,
    read_hosts,
    ssh_options,
)
from plait.cluster.control import ClusterProcesses
from plait.cluster.launchers import find_mpiexec
from plait.security import profile_dirs
from plait.wire.errors import ClusterError

#: The launchers' options: MPI's, and SSH's (``hosts`` a table {host: engines},
#: a list of hosts or the path of a hosts file; ``ssh`` the command).
LAUNCHER_OPTIONS = ("mpiexec", "mpi_args", "hosts", "ssh", "ssh_args", "ssh_python",
                    "ssh_plait_dir", "partition", "account", "walltime", "directives",
                    "template", "controller_host", "tunnel", "restart_engines",
                    "engine_memory_limit", "restart_controller", "engine_reconnect")

_live: weakref.WeakSet[Cluster] = weakref.WeakSet()


@atexit.register
def _stop_at_exit() -> None:
    for cluster in list(_live):
        if cluster.shutdown_atexit:
            try:
                cluster.stop()
            except Exception:
                pass


class Cluster:
    """A controller and engines started from Python (see the module documentation).

    ``n``: engines (default: cluster.toml's, else the number of CPUs);
    ``engines``: ``'local'``, ``'mpi'``, ``'ssh'`` or a batch system;
    ``controller``: ``'local'``, or ``'ssh'`` to start it on
    ``controller_host`` over SSH (``tunnel=True``: reached through SSH tunnels
    to that host); ``timeout``: seconds to wait for the engines; the
    launcher options (``mpiexec``, ``mpi_args``, ``hosts``, ``ssh_args``...)
    and the ipcontroller options (``ip``, ``location``, ``client_port``,
    ``engine_port``, ``scheme``, ``hwm``, ``db``, ``engine_timeout``) as in
    cluster.toml.  Bad options raise ClusterError (or TypeError for unknown
    names) here, not at ``start``.
    """

    def __init__(self, n: int | None = None, engines: str | None = None,
                 controller: str | None = None, profile: str | None = None,
                 timeout: float | None = None, shutdown_atexit: bool = True, **options: Any):
        unknown = sorted(set(options) - {*CONTROLLER_OPTIONS, *LAUNCHER_OPTIONS})
        if unknown:
            raise TypeError(f"Cluster() got unexpected options {unknown}; it takes n, engines, "
                            f"controller, profile, timeout, shutdown_atexit, "
                            f"{', '.join(LAUNCHER_OPTIONS)} and {', '.join(CONTROLLER_OPTIONS)}")
        if controller is not None and controller not in CONTROLLERS:
            raise ClusterError(f"controller must be one of {', '.join(CONTROLLERS)}, not "
                               f"{controller!r}")
        self.profile = profile
        for name in ("mpi_args", "ssh_args", "directives"):
            if options.get(name) is not None:
                options[name] = tuple(options[name])
        hosts = options.pop("hosts", None)
        if hosts is not None:
            options["ssh_hosts"] = read_hosts(hosts)
        if "ssh" in options:
            options["ssh_command"] = options.pop("ssh")
        config = load_config(profile_dirs(profile).root).with_overrides(
            n=n, engines=engines, timeout=timeout, controller_launcher=controller, **options)
        self.n = config.n
        self.engines = config.engines
        self.timeout = config.timeout
        self.shutdown_atexit = shutdown_atexit
        self._procs = ClusterProcesses(profile, controller_args=config.controller_args(),
                                       launcher=config.engines, mpiexec=config.mpiexec,
                                       mpi_args=config.mpi_args, ssh=ssh_options(config),
                                       batch=batch_options(config),
                                       **controller_options(config))
        if config.engines == "mpi":
            find_mpiexec(config.mpiexec)  # a missing mpiexec is bad input: said at once
        if self.n is None and config.engines == "ssh":
            self.n = sum(config.ssh_hosts.values()) or None
        self._clients: list[Any] = []

    # -- what runs ---------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether its controller runs."""
        return self._procs.running()

    @property
    def engine_ids(self) -> list[int]:
        """The ids of the engines this cluster started (and has not stopped)."""
        return self._procs.engine_ids

    @property
    def controller_pid(self) -> int | None:
        """The pid of its controller (a new one after its keeper started it again)."""
        self._procs.follow_keeper()
        return self._procs.controller_pid

    def __repr__(self) -> str:  # (a controller elsewhere is not asked: a repr is quick)
        elsewhere = self._procs.remote is not None or self._procs.allocation is not None
        state = "running" if elsewhere or self.running else "stopped"
        return (f"<Cluster(profile={self.profile or 'default'!r}, {state}, "
                f"engines={len(self.engine_ids) if state == 'running' else 0} {self.engines})>")

    # -- starting ----------------------------------------------------------------------
    def start(self, _controller_ready: Any = None) -> Cluster:
        """Start the controller and engines; returns once every engine is registered.
        ClusterError, with nothing left running, when something fails or is late."""
        if self.running:
            raise ClusterError(f"{self!r} is running already")
        n = self.n if self.n is not None else _cpus()
        self._procs.start(n, self.timeout, controller_ready=_controller_ready)
        if self.shutdown_atexit:
            self._procs.extra_state["owner"] = _pid()
            self._procs.save()
        _live.add(self)
        return self

    def connect_client(self, **options: Any) -> Any:
        """A :class:`~plait.parallel.Client` of this cluster (closed by :meth:`stop`)."""
        from plait.parallel._client import Client

        if not self.running:
            raise ClusterError(f"{self!r} is not running: start it first")
        self._procs.use_tunnel()
        rc = Client(profile=self.profile, **options)
        self._clients.append(rc)
        return rc

    def start_and_connect(self, **options: Any) -> Any:
        """:meth:`start`, then a connected Client that sees every engine (it connects
        while the engines register)."""
        from plait.parallel._client import Client

        made: list[Any] = []
        failed: list[BaseException] = []

        def connect() -> None:
            try:
                made.append(Client(profile=self.profile, **options))
            except BaseException as exc:
                failed.append(exc)

        worker = threading.Thread(target=connect, daemon=True)
        try:
            self.start(_controller_ready=worker.start)
            worker.join()
            if failed:
                raise failed[0]
            rc = made[0]
            self._clients.append(rc)
            rc.wait_for_engines(len(self.engine_ids), timeout=self.timeout)
        except BaseException:
            if worker.is_alive():
                worker.join()
            for rc in made:
                rc.close()
            self.stop()
            raise
        return rc

    def add_engines(self, n: int = 1) -> list[int]:
        """Start ``n`` more engines; their ids, once registered."""
        return self._procs.add_engines(n, self.timeout)

    def stop_engines(self, engine_ids: list[int] | None = None) -> None:
        """Stop the engines ``engine_ids`` (all of this cluster's when None)."""
        self._procs.stop_engines(None if engine_ids is None else list(engine_ids))

    def restart_engines(self) -> list[int]:
        """Stop every engine and start as many again; the new ids."""
        n = len(self.engine_ids)
        if not self.running:
            raise ClusterError(f"{self!r} is not running")
        self.stop_engines()
        return self.add_engines(n) if n else []

    def signal_engines(self, sig: int) -> None:
        """Send the signal ``sig`` to every engine process (``signal.SIGINT``
        interrupts the code they run)."""
        self._procs.signal_engines(sig)

    def stop(self) -> None:
        """Close its clients, stop the engines and the controller."""
        for rc in self._clients:
            try:
                rc.close()
            except Exception:
                pass
        self._clients = []
        self._procs.stop()
        _live.discard(self)

    # -- ipyparallel's names ---------------------------------------------------------------
    start_cluster_sync = start
    start_and_connect_sync = start_and_connect
    connect_client_sync = connect_client
    stop_cluster_sync = stop
    stop_engines_sync = stop_engines
    restart_engines_sync = restart_engines
    signal_engines_sync = signal_engines

    def start_engines_sync(self, n: int | None = None) -> list[int]:
        return self.add_engines(n or 1)

    # -- with ----------------------------------------------------------------------------
    def __enter__(self) -> Any:
        return self.start_and_connect()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- clusters running already ----------------------------------------------------------
    @classmethod
    def from_profile(cls, profile: str | None = None) -> Cluster:
        """The cluster running for ``profile`` (started by ipcluster or another
        process); ClusterError when none runs.  It is not stopped when this process
        exits."""
        procs = ClusterProcesses.attach(profile)
        cluster = cls.__new__(cls)
        cluster.profile = profile
        cluster.n = len(procs.engine_ids) or None
        cluster.engines = procs.launcher
        cluster.timeout = load_config(profile_dirs(profile).root).timeout
        cluster.shutdown_atexit = False
        cluster._procs = procs
        cluster._clients = []
        return cluster


class AsyncCluster:
    """:class:`Cluster` for asyncio code: the same methods, awaited
    (``await cluster.start()``, ``async with AsyncCluster(n=4) as rc``); the
    blocking work runs in a worker thread, so the event loop goes on."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.sync = Cluster(*args, **kwargs)

    def __repr__(self) -> str:
        return repr(self.sync).replace("<Cluster", "<AsyncCluster", 1)

    @property
    def engine_ids(self) -> list[int]:
        return self.sync.engine_ids

    @property
    def running(self) -> bool:
        return self.sync.running

    async def start(self) -> AsyncCluster:
        await asyncio.to_thread(self.sync.start)
        return self

    async def start_and_connect(self, **options: Any) -> Any:
        return await asyncio.to_thread(self.sync.start_and_connect, **options)

    async def connect_client(self, **options: Any) -> Any:
        return await asyncio.to_thread(self.sync.connect_client, **options)

    async def add_engines(self, n: int = 1) -> list[int]:
        return await asyncio.to_thread(self.sync.add_engines, n)

    async def stop_engines(self, engine_ids: list[int] | None = None) -> None:
        await asyncio.to_thread(self.sync.stop_engines, engine_ids)

    async def restart_engines(self) -> list[int]:
        return await asyncio.to_thread(self.sync.restart_engines)

    async def signal_engines(self, sig: int) -> None:
        await asyncio.to_thread(self.sync.signal_engines, sig)

    async def stop(self) -> None:
        await asyncio.to_thread(self.sync.stop)

    async def __aenter__(self) -> Any:
        return await self.start_and_connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @classmethod
    def from_profile(cls, profile: str | None = None) -> AsyncCluster:
        cluster = cls.__new__(cls)
        cluster.sync = Cluster.from_profile(profile)
        return cluster


def _cpus() -> int:
    return os.cpu_count() or 2


def _pid() -> int:
    return os.getpid()
