"""A cluster's processes, started, grown, signalled and stopped together.

:class:`ClusterProcesses` is what ``ipcluster`` and
:class:`plait.parallel.Cluster` drive.  It starts a controller and engine
sets (see :mod:`plait.cluster.launchers`), records them in the profile's
state file once ready, and can be attached later, from the state file alone,
by another process (``ipcluster engines``, ``ipcluster stop``,
``Cluster.from_profile``).  Every method that starts processes stops what
it started when it fails: nothing is left running behind an error.
"""

from __future__ import annotations

import os
import secrets
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plait.cluster import state as _state
from plait.cluster.allocation import AllocationJob
from plait.cluster.launchers import (
    BATCH,
    LAUNCHERS,
    EngineSet,
    ForkServer,
    Notices,
    read_ready,
    spawn_controller,
    spawn_keeper,
    spawn_mpi,
    spawn_ssh,
)
from plait.cluster.processes import pid_alive, terminate
from plait.cluster.remote import RemoteController, start_remote_controller
from plait.security import ENGINE_FURL, MEC_FURL, ProfileDirs, enrollment_key, profile_dirs
from plait.wire import enrollment
from plait.wire.errors import ClusterError

#: The secrets files the launchers write in the security folder are named so.
SECRETS_PREFIX = "enroll-"


def forget_secrets(dirs: ProfileDirs) -> None:
    """Remove the secrets files of the profile's launchers (a stopped cluster's, or
    those of an ipcluster that was killed before it could)."""
    for path in dirs.security.glob(f"{SECRETS_PREFIX}*.secrets"):
        path.unlink(missing_ok=True)


#: Where the controller runs, for ``controller=`` and ``--controller``: here, on a
#: host reached over SSH, or in the Slurm allocation of the engines.
CONTROLLERS = ("local", "ssh", "slurm")


def check_launcher(launcher: str) -> str:
    if launcher not in LAUNCHERS:
        raise ClusterError(f"engines must be one of {', '.join(LAUNCHERS)}, not {launcher!r}")
    return launcher


class ClusterProcesses:
    """The controller and engines of one profile's cluster.

    ``detach``: the processes get sessions of their own (they outlive the
    process that started them, and a Ctrl-C in it does not reach them).
    """

    def __init__(self, profile: str | None = None, *, controller_args: list[str] | None = None,
                 launcher: str = "local", mpiexec: str = "mpiexec",
                 mpi_args: tuple[str, ...] = (), detach: bool = True,
                 ssh: dict[str, Any] | None = None, batch: dict[str, Any] | None = None,
                 controller: str = "local", controller_host: str | None = None,
                 tunnel: bool = False, restart_engines: bool = False,
                 engine_memory_limit: float | None = None, restart_controller: bool = True,
                 engine_reconnect: float = 60.0):
        if controller not in CONTROLLERS:
            raise ClusterError(f"controller must be one of {', '.join(CONTROLLERS)}, not "
                               f"{controller!r}")
        if controller_host and controller != "ssh":
            raise ClusterError(f"controller_host={controller_host!r} is for a controller "
                               f"started over SSH: give controller='ssh' too")
        if controller == "ssh" and not controller_host:
            raise ClusterError("a controller started over SSH needs controller_host "
                               "(the host to run it on, e.g. 'user@head')")
        if controller == "slurm" and launcher != "slurm":
            raise ClusterError(f"a controller in a Slurm allocation runs with engines='slurm' "
                               f"(the engines of the same job), not {launcher!r}")
        if tunnel and controller != "ssh":
            raise ClusterError("tunnel=True reaches a controller on another host "
                               "(controller='ssh'); this one runs here")
        if tunnel and launcher not in ("local", "ssh"):
            raise ClusterError(f"tunnels serve local and SSH engines, not {launcher!r} ones")
        if restart_engines and launcher not in ("local", "ssh"):
            raise ClusterError(f"engines are restarted by the fork server of their host: "
                               f"restart_engines is for local and SSH engines, not "
                               f"{launcher!r} ones (whose processes mpiexec or the batch "
                               f"system starts)")
        #: engines that die are replaced, keeping their ids (a supervising fork server
        #: on their host: this one, or each SSH host)
        self.restart_engines = restart_engines
        #: a controller of this host that dies is started again (see plait.cluster.keeper)
        self.restart_controller = restart_controller
        self.keeper_pid: int | None = None
        if engine_reconnect < 0:
            raise ClusterError(f"engine_reconnect is a number of seconds >= 0, not "
                               f"{engine_reconnect!r}")
        #: seconds an engine that lost its controller tries to join it again
        self.engine_reconnect = engine_reconnect
        #: MB of resident memory past which an engine exits, saying why (local, SSH)
        self.engine_memory_limit = engine_memory_limit
        if engine_memory_limit and launcher not in ("local", "ssh"):
            raise ClusterError(f"engine_memory_limit is for local and SSH engines, not "
                               f"{launcher!r} ones")
        self.profile = profile
        #: ``local``, or ``ssh``: on ``controller_host``, reached with the [ssh] options;
        #: ``tunnel``: clients and engines reach it through SSH tunnels to that host
        self.controller = controller
        self.controller_host = controller_host
        self.tunnel = tunnel
        self.remote: RemoteController | None = None
        self.allocation: AllocationJob | None = None
        self._tunnel: Any = None  # the SSH tunnel of this process to the controller, if any
        self.dirs: ProfileDirs = profile_dirs(profile)
        self.controller_args = list(controller_args or [])
        if "--enroll" not in self.controller_args:  # a copied engine FURL admits nobody
            self.controller_args.append("--enroll")
        self.launcher = check_launcher(launcher)
        self.mpiexec = mpiexec
        self.mpi_args = tuple(mpi_args)
        #: SSH engines: ``hosts`` ({host: engines}), ``command``, ``args``, ``python``
        #: and ``plait_dir`` (see :func:`plait.cluster.launchers.spawn_ssh`)
        self.ssh = dict(ssh or {})
        #: batch jobs: ``partition``, ``account``, ``time``, ``directives``, ``template``
        self.batch = dict(batch or {})
        self.detach = detach
        self.controller_pid: int | None = None
        self.controller_proc: Any = None
        self.engine_sets: list[EngineSet] = []
        self.extra_state: dict[str, Any] = {}
        self._started: dict[str, Any] = {}  # start times of the pids, as recorded

    # -- what runs ---------------------------------------------------------------------
    @property
    def engine_ids(self) -> list[int]:
        """The ids of the engines started here that still run (an engine of this
        host or of mpiexec that exited, killed by a signal say, is left out)."""
        ids = []
        for group in self.engine_sets:
            if group.supervised:
                ids += group.ids  # (their pids change as they are restarted)
            elif group.launcher in ("local", "mpi") and len(group.pids) == len(group.ids):
                ids += [i for i, p in zip(group.ids, group.pids, strict=True) if pid_alive(p)]
            else:
                ids += group.ids
        return sorted(ids)

    @property
    def engine_pids(self) -> list[int]:
        """The pids of the engines of this host (SSH engines' pids are their hosts',
        and batch engines' unknown)."""
        return [p for group in self.engine_sets if group.launcher in ("local", "mpi")
                for p in group.pids]

    def running(self) -> bool:
        """Whether the controller still runs (asked over SSH for a remote one, of the
        scheduler for one in an allocation)."""
        if self.remote is not None:
            return self.remote.alive()
        if self.allocation is not None:
            return self.allocation.alive()
        self.follow_keeper()
        if self.controller_pid is None:
            return False
        return _state.ours({"started": self._started}, self.controller_pid)

    # -- starting ----------------------------------------------------------------------
    def start(self, n: int, timeout: float = 30.0,
              controller_ready: Callable[[], None] | None = None) -> list[int]:
        """Start the controller and ``n`` engines; the engine ids once all registered.

        ``controller_ready()``, if given, is called as soon as the controller is
        (a client may connect while the engines register).  ClusterError (with
        nothing left running) when a cluster already runs for the profile, a
        process fails, or ``timeout`` seconds pass first.
        """
        if n < 1:
            raise ClusterError(f"a cluster needs at least 1 engine, not {n}")
        if _state.read_state(self.dirs) is not None:
            raise ClusterError(f"a cluster is already running for profile "
                               f"'{self.profile or 'default'}'; stop it first "
                               f"(ipcluster stop --profile={self.profile or 'default'})")
        deadline = time.monotonic() + timeout
        notices = Notices()
        zygote: ForkServer | None = None
        try:
            if self.controller == "slurm":
                self._start_allocation(n, deadline, timeout, controller_ready)
            elif self.controller == "ssh":
                self._start_remote(timeout)
                if controller_ready is not None:
                    controller_ready()
                self._start_set(n, notices, deadline, timeout)
            elif self.launcher == "local":
                # The engines are forked by a fork server that imports what they need
                # while the controller starts beside it; they get the FURL once the
                # controller is ready.
                proc, ready_fd = spawn_controller(self.profile, self.controller_args,
                                                  self.detach)
                self.controller_proc, self.controller_pid = proc, proc.pid
                zygote = ForkServer(self.detach)
                zygote.secrets(self._issue(n))
                early = EngineSet("local", n)
                self.engine_sets.append(early)
                if self.restart_engines:
                    zygote.supervise()
                    early.supervised, early.launcher_pid = True, zygote.proc.pid
                early.procs = zygote.engines(n, self.profile,
                                             [f"--notify-socket={notices.arg}",
                                              *self._engine_args()], deadline,
                                             self._late(n, timeout))
                furl_file = read_ready(ready_fd, proc, deadline, self.dirs)
                zygote.furl(furl_file.read_text().strip())
                if controller_ready is not None:
                    controller_ready()
                zygote.close()
                zygote = None
                notices.wait(early, deadline, timeout, self.dirs)
            else:
                if self.launcher == "ssh":
                    self._check_reachable()
                proc, ready_fd = spawn_controller(self.profile, self.controller_args,
                                                  self.detach)
                self.controller_proc, self.controller_pid = proc, proc.pid
                read_ready(ready_fd, proc, deadline, self.dirs)
                if controller_ready is not None:
                    controller_ready()
                self._start_set(n, notices, deadline, timeout)
            if self.restart_controller and self.controller == "local":
                self.keeper_pid = spawn_keeper(self.profile, self.controller_args,
                                               self.controller_pid)
        except BaseException:
            if zygote is not None:
                zygote.close()
            self.stop()
            raise
        finally:
            notices.close()
        self.save()
        return self.engine_ids

    def add_engines(self, n: int, timeout: float = 30.0, launcher: str | None = None
                    ) -> list[int]:
        """Start ``n`` more engines (with the cluster's launcher, or ``launcher``); their
        ids once registered.  ClusterError when the controller is not running, or the
        engines fail or are late (those started are stopped then)."""
        if n < 1:
            raise ClusterError(f"add at least 1 engine, not {n}")
        if not self.running():
            raise ClusterError(f"the cluster of profile '{self.profile or 'default'}' is "
                               f"not running")
        deadline = time.monotonic() + timeout
        notices = Notices()
        before = len(self.engine_sets)
        try:
            self._start_set(n, notices, deadline, timeout, launcher)
        except BaseException:
            for group in self.engine_sets[before:]:
                group.stop()
            del self.engine_sets[before:]
            raise
        finally:
            notices.close()
        self.save()
        return sorted(i for group in self.engine_sets[before:] for i in group.ids)

    def _start_remote(self, timeout: float) -> None:
        """The controller, on its host; FURL files fetched, tunnels ready if asked."""
        ip = next((a.split("=", 1)[1] for a in self.controller_args if a.startswith("--ip=")),
                  "127.0.0.1")
        if not self.tunnel and ip in ("127.0.0.1", "localhost", "::1"):
            raise ClusterError(
                f"a controller on {self.controller_host} listening on its own 127.0.0.1 is "
                f"reached only through SSH tunnels: give tunnel=True, or ip= (an address "
                f"of that host this one and the engines' hosts can reach)")
        self.remote = start_remote_controller(
            str(self.controller_host), self.profile, self.controller_args, self.dirs, timeout,
            **self._ssh_options())
        self.controller_pid = self.remote.pid
        self.use_tunnel()

    def _start_allocation(self, n: int, deadline: float, timeout: float,
                          controller_ready: Callable[[], None] | None) -> None:
        """One Slurm job: the controller on its first node, ``n`` engines as its step."""
        from plait.cluster import allocation, batch
        from plait.kernel.client import MultiEngineClient

        enroll_file = self._secrets_file(n)
        try:
            self.allocation = allocation.submit(n, self.profile, self.dirs,
                                                self.controller_args,
                                                batch.BatchOptions.from_dict(self.batch),
                                                deadline, timeout, enroll_file=enroll_file)
            job = self.allocation.job
            group = EngineSet("slurm", n, job=job.job, log=job.output)
            self.engine_sets.append(group)
            if controller_ready is not None:
                controller_ready()
            mec = MultiEngineClient(self.dirs.furl_path(MEC_FURL))
            group.ids = batch.wait_for_engines(job, mec.get_ids, n, deadline, timeout)
        finally:
            enroll_file.unlink(missing_ok=True)

    def _ssh_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.ssh.items()
                if k in ("command", "args", "python", "plait_dir") and v is not None}

    def use_tunnel(self) -> None:
        """(With ``tunnel``) reach the controller through an SSH tunnel from this process."""
        if not self.tunnel:
            return
        from plait.security import PARALLEL_FURL, read_furl
        from plait.wire.tunnel import tunnel_to, use_tunnel

        options = self._ssh_options()
        self._tunnel = tunnel_to(str(self.controller_host), command=options.get("command"),
                                 args=tuple(options.get("args", ())))
        use_tunnel(read_furl(self.dirs.furl_path(PARALLEL_FURL)), self._tunnel)

    def _engine_args(self) -> list[str]:
        """The ipengine flags every engine of this cluster gets (tunnels, limits)."""
        limit = [] if not self.engine_memory_limit else [
            f"--memory-limit={self.engine_memory_limit:g}"]
        return [*self._tunnel_args(), *limit, f"--reconnect={self.engine_reconnect:g}"]

    def _tunnel_args(self) -> list[str]:
        """The ipengine flags reaching the controller through a tunnel (or none)."""
        if not self.tunnel:
            return []
        options = self._ssh_options()
        return [f"--ssh={self.controller_host}",
                f"--ssh-args={shlex.join(options.get('args', ()))}",
                *([f"--ssh-command={options['command']}"] if options.get("command") else [])]

    def _issue(self, n: int) -> list[str]:
        """``n`` one-time enrollment secrets for the engines started next."""
        try:
            # (a controller on another host made its own, fetched when it started)
            key = enrollment_key(self.dirs, create=self.controller != "ssh")
        except ValueError as exc:
            raise ClusterError(f"cannot give the engines enrollment secrets: {exc}") from None
        return enrollment.issue(key, n)

    def _secrets_file(self, n: int) -> Path:
        """A new secrets file of ``n`` engines (a line for each rank), in the security
        folder, which engines on other nodes see as they see the engine FURL (removed
        once they registered, or when the cluster stops: :func:`forget_secrets`)."""
        path = self.dirs.security / f"{SECRETS_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.secrets"
        enrollment.write_secrets(path, self._issue(n))
        return path

    def _start_set(self, n: int, notices: Notices, deadline: float, timeout: float,
                   launcher: str | None = None) -> EngineSet:
        kind = check_launcher(launcher or self.launcher)
        if kind in BATCH:
            return self._start_job(kind, n, deadline, timeout)
        if kind == "ssh":
            hosts = self._ssh_share(n)
            options = {k: v for k, v in self.ssh.items() if k != "hosts" and v is not None}
            groups = spawn_ssh(hosts, self.profile,
                               self.dirs.furl_path(ENGINE_FURL).read_text().strip(),
                               self.dirs, deadline, timeout,
                               engine_args=tuple(self._engine_args()), issue=self._issue,
                               supervise=self.restart_engines, **options)
            self.engine_sets.extend(groups)
            return groups[0]
        enroll_file = None
        if kind == "mpi":
            enroll_file = self._secrets_file(n)
            try:
                group = spawn_mpi(n, self.profile, notices, self.dirs, self.mpiexec,
                                  self.mpi_args, self.detach, enroll_file)
            except BaseException:
                enroll_file.unlink(missing_ok=True)
                raise
        else:
            group = EngineSet("local", n)
            self.engine_sets.append(group)
            zygote = ForkServer(self.detach)
            if self.restart_engines:
                zygote.supervise()
                group.supervised, group.launcher_pid = True, zygote.proc.pid
            try:
                zygote.secrets(self._issue(n))
                group.procs = zygote.engines(n, self.profile,
                                             [f"--notify-socket={notices.arg}",
                                              *self._engine_args()], deadline,
                                             self._late(n, timeout))
                zygote.furl(self.dirs.furl_path(ENGINE_FURL).read_text().strip())
            finally:
                zygote.close()
            notices.wait(group, deadline, timeout, self.dirs)
            return group
        self.engine_sets.append(group)
        # ranks on other nodes cannot reach the notice socket: the controller counts them
        from plait.kernel.client import MultiEngineClient

        mec = MultiEngineClient(self.dirs.furl_path(MEC_FURL))
        before = set(mec.get_ids())
        try:
            notices.wait(group, deadline, timeout, self.dirs,
                         new_ids=lambda: sorted(set(mec.get_ids()) - before))
        finally:  # (its secrets are used, or the engines that would use them stopped)
            if enroll_file is not None:
                enroll_file.unlink(missing_ok=True)
        return group

    def _start_job(self, system: str, n: int, deadline: float, timeout: float) -> EngineSet:
        """Submit a batch job of ``n`` engines; its set once they registered."""
        from plait.cluster import batch
        from plait.kernel.client import MultiEngineClient

        options = batch.BatchOptions.from_dict(self.batch)
        mec = MultiEngineClient(self.dirs.furl_path(MEC_FURL))  # to ask who registered
        before = set(mec.get_ids())
        # (the file stays until the cluster stops: the job's ranks may start late)
        enroll_file = self._secrets_file(n)
        try:
            job = batch.submit(system, n, self.profile, self.dirs, options,
                               enroll_file=enroll_file)
        except BaseException:
            enroll_file.unlink(missing_ok=True)
            raise
        group = EngineSet(system, n, job=job.job, log=job.output)
        self.engine_sets.append(group)
        ids = batch.wait_for_engines(job, mec.get_ids, len(before) + n, deadline, timeout)
        group.ids = sorted(set(ids) - before)
        return group

    def _late(self, n: int, timeout: float) -> str:
        return (f"only 0 of {n} engines registered within {timeout:g} s; see the logs in "
                f"{self.dirs.log}")

    def _ssh_share(self, n: int) -> dict[str, int]:
        """How many of ``n`` engines go to each SSH host: as the hosts table says
        when ``n`` is its total, else spread evenly in its order."""
        hosts: dict[str, int] = dict(self.ssh.get("hosts") or {})
        if not hosts:
            raise ClusterError("SSH engines need hosts, e.g. hosts={'node1': 2, 'node2': 4}")
        if n == sum(hosts.values()):
            return hosts
        names = list(hosts)
        share = {name: n // len(names) for name in names}
        for name in names[: n % len(names)]:
            share[name] += 1
        return {name: k for name, k in share.items() if k}

    def _check_reachable(self) -> None:
        ip = next((a.split("=", 1)[1] for a in self.controller_args if a.startswith("--ip=")),
                  "127.0.0.1")
        if ip in ("127.0.0.1", "localhost", "::1"):
            raise ClusterError(
                "SSH engines run on other hosts, which cannot reach a controller listening "
                "on 127.0.0.1: give ip= (an address of this host they can reach, or "
                "'0.0.0.0' with location=)")

    # -- signalling and stopping -----------------------------------------------------------
    def signal_engines(self, sig: int) -> list[int]:
        """Send ``sig`` to every engine process; the pids it reached."""
        return [p for group in self.engine_sets for p in group.signal(sig)]

    def stop_engines(self, ids: list[int] | None = None) -> None:
        """Stop the engines with ``ids`` (all when None): SIGTERM, then SIGKILL."""
        wanted = None if ids is None else set(ids)
        pids: list[int] = []
        kept: list[EngineSet] = []
        for group in self.engine_sets:
            if self.allocation is not None and group.job == self.allocation.job.job:
                if wanted is None or wanted & set(group.ids):
                    raise ClusterError("the engines in the controller's Slurm job stop with "
                                       "the cluster (stop()); engines added later stop alone")
                kept.append(group)
                continue
            if wanted is None or set(group.ids) <= wanted:
                group.stop()  # the whole set (and its mpiexec or SSH session)
                continue
            if group.launcher == "mpi" and wanted & set(group.ids):
                raise ClusterError("engines started by one mpiexec stop together: "
                                   f"give all of {sorted(group.ids)}")
            if group.launcher in BATCH and wanted & set(group.ids):
                raise ClusterError("the engines of one batch job stop together: "
                                   f"give all of {sorted(group.ids)}")
            if group.supervised and wanted & set(group.ids):
                raise ClusterError("engines that are restarted when they die stop "
                                   f"together: give all of {sorted(group.ids)}")
            stop = [(i, p) for i, p in zip(group.ids, group.pids, strict=True) if i in wanted]
            if group.launcher == "ssh":
                group.stop([p for _, p in stop])
            else:
                pids += [p for _, p in stop]
            group.ids = [i for i in group.ids if i not in wanted]
            group.pids = [p for p in group.pids if p not in {q for _, q in stop}]
            kept.append(group)
        terminate(pids)
        self.engine_sets = kept
        if self.running():
            self.save()

    def follow_keeper(self) -> None:
        """The controller's pid, as the keeper last wrote it (it changes when the
        keeper starts the controller again)."""
        if self.keeper_pid is None:
            return
        recorded = _state.read_state(self.dirs)
        if recorded is not None and recorded.get("controller"):
            self.controller_pid = recorded["controller"]
            self._started = recorded.get("started", self._started)

    def stop(self) -> None:
        """Stop the engines, then the controller, and forget the state file."""
        if self.keeper_pid is not None:  # first: it would start the controller again
            if _state.ours({"started": self._started}, self.keeper_pid):
                terminate([self.keeper_pid])
            self.follow_keeper()
            self.keeper_pid = None
        for group in self.engine_sets:
            group.stop()
        if self._tunnel is not None:  # its routes go: the host may be reached directly again
            self._tunnel.close()
            self._tunnel = None
        unreachable = None
        if self.remote is not None:
            if not self.remote.stop():
                unreachable = self.remote
        elif self.allocation is not None:
            self.allocation.job.cancel()  # (its engines' set did already: once more is harmless)
            self.allocation.ready.unlink(missing_ok=True)
        elif self.controller_pid is not None:
            terminate([self.controller_pid])
        for proc in [self.controller_proc, *(p for g in self.engine_sets for p in g.procs)]:
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except Exception:
                    pass
        self.engine_sets = []
        forget_secrets(self.dirs)
        if unreachable is not None:  # its state stays, for another try
            raise ClusterError(f"could not reach {unreachable.host} over SSH to stop the "
                               f"controller there (pid {unreachable.pid}); the cluster's "
                               f"state is kept: try 'ipcluster stop' again")
        if self._owns_state():
            _state.clear_state(self.dirs)
        self.controller_pid = None
        self.controller_proc = None
        self.remote = None
        self.allocation = None

    def _owns_state(self) -> bool:
        """Whether the profile's state file (if any) is this cluster's, not another's
        that runs (a start refused because one runs must not forget it)."""
        recorded = _state.read_state(self.dirs)
        if recorded is None:
            return True
        if recorded.get("remote") or recorded.get("allocation"):
            mine = (self.remote.to_state() if self.remote is not None else
                    self.allocation.to_state() if self.allocation is not None else None)
            return mine is not None and mine in (recorded.get("remote"),
                                                 recorded.get("allocation"))
        return recorded.get("controller") in (None, self.controller_pid) and (
            self.controller_pid is not None or recorded.get("controller") is None)

    # -- the state file ----------------------------------------------------------------
    def save(self) -> None:
        with _state.locked(self.dirs):
            self._save()

    def _save(self) -> None:
        self.follow_keeper()  # (never write back a controller pid the keeper replaced)
        here = self.remote is None and self.allocation is None  # a pid of this host
        state = {"profile": self.profile or "default",
                 "controller": self.controller_pid if here else None,
                 "engines": self.engine_pids,
                 "engine_sets": [g.to_state() for g in self.engine_sets],
                 "launcher": self.launcher, "controller_args": self.controller_args,
                 "mpiexec": self.mpiexec, "mpi_args": list(self.mpi_args), "ssh": self.ssh,
                 "batch": self.batch, "controller_at": self.controller,
                 "controller_host": self.controller_host, "tunnel": self.tunnel,
                 "restart_engines": self.restart_engines,
                 "restart_controller": self.restart_controller, "keeper": self.keeper_pid,
                 "engine_reconnect": self.engine_reconnect,
                 "engine_memory_limit": self.engine_memory_limit,
                 "remote": None if self.remote is None else self.remote.to_state(),
                 "allocation": None if self.allocation is None else self.allocation.to_state(),
                 **self.extra_state, "started": self._started}
        _state.write_state(self.dirs, state)
        self._started = (_state.read_state(self.dirs) or {}).get("started", {})

    @classmethod
    def attach(cls, profile: str | None = None) -> ClusterProcesses:
        """The running cluster of ``profile``, from its state file; ClusterError if none."""
        dirs = profile_dirs(profile)
        recorded = _state.read_state(dirs)
        if recorded is None:
            raise ClusterError(f"no cluster is running for profile '{profile or 'default'}'")
        procs = cls(profile, controller_args=recorded.get("controller_args", []),
                    launcher=recorded.get("launcher", "local"),
                    mpiexec=recorded.get("mpiexec", "mpiexec"),
                    mpi_args=tuple(recorded.get("mpi_args", ())),
                    ssh=recorded.get("ssh") or {}, batch=recorded.get("batch") or {},
                    controller=recorded.get("controller_at", "local"),
                    controller_host=recorded.get("controller_host"),
                    tunnel=bool(recorded.get("tunnel")),
                    restart_engines=bool(recorded.get("restart_engines")),
                    restart_controller=bool(recorded.get("restart_controller")),
                    engine_reconnect=float(recorded.get("engine_reconnect", 0) or 0),
                    engine_memory_limit=recorded.get("engine_memory_limit"))
        procs.controller_pid = recorded["controller"]
        keeper = recorded.get("keeper")
        procs.keeper_pid = keeper if keeper and _state.ours(recorded, keeper) else None
        if recorded.get("remote"):
            procs.remote = RemoteController.from_state(recorded["remote"])
            procs.controller_pid = procs.remote.pid
        if recorded.get("allocation"):
            procs.allocation = AllocationJob.from_state(recorded["allocation"])
        procs._started = recorded.get("started", {})
        procs.engine_sets = [EngineSet.from_state(g) for g in recorded.get("engine_sets", [])]
        for group in procs.engine_sets:  # a pid taken over by another process is not ours
            if group.launcher in ("local", "mpi"):
                if len(group.ids) == len(group.pids):
                    alive = [(i, p) for i, p in zip(group.ids, group.pids, strict=True)
                             if _state.ours(recorded, p)]
                    group.ids = [i for i, _ in alive]
                    group.pids = [p for _, p in alive]
                else:
                    group.pids = [p for p in group.pids if _state.ours(recorded, p)]
                if group.launcher_pid is not None and not _state.ours(recorded,
                                                                      group.launcher_pid):
                    group.launcher_pid = None
        if not procs.engine_sets and recorded.get("engines"):  # a state of an older plait
            procs.engine_sets = [EngineSet("local", len(recorded["engines"]),
                                           pids=list(recorded["engines"]))]
        procs.extra_state = {k: recorded[k] for k in ("ipcluster", "owner") if k in recorded}
        procs.detach = True
        return procs

    def where_controller(self) -> str:
        """``pid 123``, ``pid 123 on me@head``, or ``in Slurm job 45``."""
        if self.allocation is not None:
            return f"in Slurm job {self.allocation.job.job}"
        at = "" if self.remote is None else f" on {self.remote.host}"
        return f"pid {self.controller_pid}{at}"

    def describe(self) -> str:
        where = f"profile '{self.profile or 'default'}'"
        if not self.running():
            return f"stopped cluster of {where}"
        return (f"cluster of {where}: controller {self.where_controller()}, "
                f"{len(self.engine_ids)} engines {self.engine_ids}")
