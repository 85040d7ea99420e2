"""A real Slurm on this machine for the batch tests: ``munged``, ``slurmctld`` and
``slurmd``, started from Debian's packages with a configuration the test writes
(its own ports, state and spool folders, and a munge key of its own).

The node declares 16 CPUs (``SlurmdParameters=config_overrides``), so that
jobs of a few engines fit on a 2-core machine. ``SLURM_CONF`` points the
commands (sbatch, squeue, scancel) at it while the context lasts.
:func:`unavailable` says what is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from support import free_port

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "running the Slurm daemons needs root"
    for path in DAEMONS:
        if not os.path.exists(path):
            return f"{path} is not installed (apt-get install slurm-wlm munge)"
    for command in ("sbatch", "squeue", "scancel", "mungekey"):
        if shutil.which(command) is None:
            return f"{command} is not installed (apt-get install slurm-wlm munge)"
    return None


class Slurm:
    """The daemons, in ``folder``; a context manager."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self._saved: str | None = None

    def __enter__(self) -> Slurm:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        f = self.folder
        for sub in ("state", "spool", "log"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mungekey", "-c", "-k", str(f / "munge.key")], check=True,
                       capture_output=True)
        (f / "munge.key").chmod(0o600)
        sock = f / "munge.sock"
        self.procs.append(subprocess.Popen(
            ["/usr/sbin/munged", "-F", f"--key-file={f / 'munge.key'}", f"--socket={sock}",
             f"--pid-file={f / 'munged.pid'}", f"--log-file={f / 'log' / 'munged.log'}",
             f"--seed-file={f / 'munge.seed'}", "--force"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        host = socket.gethostname()
        self.conf.write_text(f"""ClusterName=plaittest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={f / 'log' / 'slurmctld.log'}
SlurmdLogFile={f / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
KillWait=2
NodeName={host} NodeAddr=127.0.0.1 CPUs=16 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        self._saved = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(self.conf)
        deadline = time.monotonic() + 60
        while not sock.exists():  # munged makes its socket once ready
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError("munged did not start")
            time.sleep(0.05)
        for daemon in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd"):
            self.procs.append(subprocess.Popen([daemon, "-D", "-f", str(self.conf)],
                                               stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
        while self.state() != "idle":  # the node registered with slurmctld
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"Slurm did not come up: {self.logs()}")
            time.sleep(0.1)

    def state(self) -> str:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
        return out.stdout.strip()

    def job_state(self, job: str) -> str:
        out = subprocess.run(["squeue", "-h", "-o", "%T", "-j", job], capture_output=True,
                             text=True)
        return out.stdout.strip()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:]
                         for p in (self.folder / "log").glob("*.log"))

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None or "SLURM_CONF" in os.environ:
            subprocess.run(["scancel", "--full", "--user=root"], capture_output=True)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = self._saved
