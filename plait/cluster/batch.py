"""Engines as batch jobs: Slurm, Grid Engine (SGE), PBS and LSF.

One mechanism for all four.  A job script is rendered from the system's
template (or the user's own, a file with the same ``{placeholders}``) and
given to the submit command on its standard input.  The job id is read from
what that command prints.  Readiness is the controller's own count: the
engines may run on any node, so the launcher asks the controller, as a
client, which engines are registered (every :data:`CHECK_EVERY` seconds),
and checks on the job (``squeue``, ``qstat -j``; every :data:`JOB_CHECK_EVERY`
seconds): a batch system tells nobody when a job starts or dies, so a failed
or cancelled job is an error within that time, not a timeout (a refused one
at once).  Grid Engine's error state (``Eqw``: e.g. an output file the node
cannot open) counts as ended, quoting its reason, as such a job never runs.
Only Slurm's and Grid Engine's job states are read so far; for PBS and LSF a
job that dies shows as the timeout.
``stop`` cancels the job (``scancel``, ``qdel``, ``bkill``).

The placeholders of a template:

``{name}``
    the job name (``plait-engines-PROFILE``)
``{n}``
    the number of engines
``{output}``
    the job's output file, in the profile's log folder
``{directives}``
    the scheduler lines for ``partition`` / ``queue``, ``account``,
    ``time``, and the user's extra ``directives``
``{engine}``
    the command that runs one engine (it reads the profile's engine FURL
    file, and its one-time enrollment secret from a secrets file beside it,
    the line of its rank, so the compute nodes must see the profile folder,
    as they see the home folders on a cluster)
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plait.security import ENGINE_FURL, ProfileDirs
from plait.wire.errors import ClusterError

#: The batch systems, for ``engines=`` and ``--engines``.
BATCH_SYSTEMS = ("slurm", "sge", "pbs", "lsf")

#: Seconds between asking the controller who registered, and between asking the
#: scheduler about the job (its queue is the scheduler's busiest part: seldom).
CHECK_EVERY = 0.2
JOB_CHECK_EVERY = 2.0

TEMPLATES = {
    "slurm": """#!/bin/sh
#SBATCH --job-name={name}
#SBATCH --ntasks={n}
#SBATCH --output={output}
{directives}
echo "plait: job $SLURM_JOB_ID started on $(hostname) at $(date +%s.%N)"
srun {engine}
""",
    "sge": """#!/bin/sh
#$ -N {name}
#$ -t 1-{n}
#$ -o {output}
#$ -j y
#$ -V
#$ -cwd
{directives}
{engine}
""",
    "pbs": """#!/bin/sh
#PBS -N {name}
#PBS -J 1-{n}
#PBS -o {output}
#PBS -j oe
#PBS -V
{directives}
{engine}
""",
    "lsf": """#!/bin/sh
#BSUB -J {name}[1-{n}]
#BSUB -o {output}
{directives}
{engine}
""",
}

#: How each system spells a directive: (prefix, partition/queue, account, time).
DIRECTIVES = {
    "slurm": ("#SBATCH", "--partition={}", "--account={}", "--time={}"),
    "sge": ("#$", "-q {}", "-A {}", "-l h_rt={}"),
    "pbs": ("#PBS", "-q {}", "-A {}", "-l walltime={}"),
    "lsf": ("#BSUB", "-q {}", "-P {}", "-W {}"),
}

SUBMIT = {"slurm": ["sbatch", "--parsable"], "sge": ["qsub", "-terse"], "pbs": ["qsub"],
          "lsf": ["bsub"]}
CANCEL = {"slurm": ["scancel"], "sge": ["qdel"], "pbs": ["qdel"], "lsf": ["bkill"]}
#: The command telling a job's state, and the states meaning it has ended.
STATUS = {"slurm": (["squeue", "-h", "-o", "%T", "-j"],
                    ("FAILED", "CANCELLED", "COMPLETED", "TIMEOUT", "NODE_FAIL",
                     "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"))}


@dataclass
class BatchOptions:
    """Where and how long the job runs; ``template`` a file replacing the system's."""

    partition: str | None = None  # Slurm's partition; the queue of the others
    account: str | None = None
    time: str | None = None  # walltime, as the system writes it (e.g. "01:00:00")
    directives: list[str] = field(default_factory=list)  # more scheduler lines, verbatim
    template: str | None = None

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> BatchOptions:
        known = {"partition", "queue", "account", "time", "directives", "template"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ClusterError(f"unknown batch options {unknown}; known: {sorted(known)}")
        directives = options.get("directives") or []
        if isinstance(directives, str) or not all(isinstance(d, str) for d in directives):
            raise ClusterError("batch directives are a list of strings")
        return cls(options.get("partition") or options.get("queue"), options.get("account"),
                   options.get("time"), list(directives), options.get("template"))


def engine_command(profile: str | None, dirs: ProfileDirs, python: str | None = None,
                   enroll_file: Path | None = None) -> str:
    """The command of one engine (with ``enroll_file``: it takes its rank's secret there)."""
    cmd = [python or sys.executable, "-m", "plait.scripts.ipengine",
           f"--furl-file={dirs.furl_path(ENGINE_FURL)}"]
    if enroll_file is not None:
        cmd += [f"--enroll-file={enroll_file}", "--enroll-slot=rank"]
    if profile:
        cmd.append(f"--profile={profile}")
    return shlex.join(cmd)


def render(system: str, n: int, profile: str | None, dirs: ProfileDirs, output: Path,
           options: BatchOptions, python: str | None = None,
           enroll_file: Path | None = None) -> str:
    """The job script starting ``n`` engines under ``system``."""
    if system not in TEMPLATES:
        raise ClusterError(f"unknown batch system {system!r}: one of {', '.join(TEMPLATES)}")
    prefix, partition, account, walltime = DIRECTIVES[system]
    lines = [f"{prefix} {spelling.format(value)}" for spelling, value in (
        (partition, options.partition), (account, options.account), (walltime, options.time))
        if value]
    lines += [d if d.startswith("#") else f"{prefix} {d}" for d in options.directives]
    template = TEMPLATES[system]
    if options.template:
        try:
            template = Path(options.template).read_text()
        except OSError as exc:
            raise ClusterError(f"cannot read the batch template {options.template}: "
                               f"{exc.strerror}") from None
    try:
        return template.format(name=f"plait-engines-{profile or 'default'}", n=n,
                               output=output, directives="\n".join(lines),
                               engine=engine_command(profile, dirs, python, enroll_file))
    except (KeyError, IndexError, ValueError) as exc:
        raise ClusterError(f"the batch template has a bad placeholder: {exc}") from None


def job_id(system: str, printed: str) -> str:
    """The job id in what the submit command printed; ClusterError when there is none."""
    text = printed.strip()
    patterns = {"slurm": r"^(\d+)", "sge": r"^(\d+)", "pbs": r"^(\d+(?:\[\])?(?:\.\S+)?)",
                "lsf": r"Job <(\d+)>"}
    found = re.search(patterns[system], text, re.M)
    if found is None:
        raise ClusterError(f"cannot find the job id in what {SUBMIT[system][0]} printed: "
                           f"{text!r}")
    return found.group(1)


@dataclass
class BatchJob:
    system: str
    job: str
    n: int
    output: Path

    def cancel(self) -> None:
        try:
            subprocess.run([*CANCEL[self.system], self.job], capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            pass

    def ended(self) -> str | None:
        """The job's final state once it ended, or Grid Engine's error state (None while
        it waits or runs, or when the system cannot say)."""
        if self.system == "sge":
            return self._sge_ended()
        status = STATUS.get(self.system)
        if status is None:
            return None
        command, final = status
        try:
            out = subprocess.run([*command, self.job], capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        state = out.stdout.strip().split("\n")[0].strip()
        if state in final:
            return state
        if out.returncode == 0 and not state:  # gone from the queue: it ended
            return "ENDED"
        if "Invalid job id" in out.stderr:
            return "ENDED"
        return None

    def _sge_ended(self) -> str | None:
        """Grid Engine's answer: ``qstat -j`` knows a job until it ended, and gives an
        error reason for each task in the error state."""
        try:
            out = subprocess.run(["qstat", "-j", self.job], capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode != 0:
            return "ENDED" if "do not exist" in out.stderr + out.stdout else None
        for line in out.stdout.splitlines():  # "error reason  1:  DATE TIME [uid:pid]: why"
            found = re.match(r"error reason\s+[\d,-]*:\s*(?:\S+ \S+ \[[^\]]*\]:\s*)?(.*)",
                             line)
            if found:
                return f"Eqw: {found.group(1).strip()}"
        return None

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.output.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return ("; the job's output ends with:\n    " + "\n    ".join(text)) if text else ""


def submit(system: str, n: int, profile: str | None, dirs: ProfileDirs,
           options: BatchOptions, python: str | None = None,
           enroll_file: Path | None = None) -> BatchJob:
    """Submit the job of ``n`` engines; ClusterError quoting the submit command when
    it refuses (or is not installed)."""
    output = dirs.log / f"{system}-engines-{os.getpid()}-{secrets.token_hex(3)}.log"
    script = render(system, n, profile, dirs, output, options, python, enroll_file)
    command = SUBMIT[system]
    try:
        done = subprocess.run(command, input=script, capture_output=True, text=True,
                              timeout=60)
    except FileNotFoundError:
        raise ClusterError(f"cannot submit the engines' job: {command[0]} is not found (is "
                           f"{system} installed, and on PATH?)") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{command[0]} did not answer within 60 s") from None
    if done.returncode != 0:
        raise ClusterError(f"{command[0]} refused the engines' job: "
                           f"{(done.stderr or done.stdout).strip()}")
    return BatchJob(system, job_id(system, done.stdout), n, output)


def wait_for_engines(job: BatchJob, registered: Any, total: int, deadline: float,
                     timeout: float) -> list[int]:
    """Wait until ``total`` engines are registered (``registered()`` gives the ids the
    controller knows) while the job lives; the ids.  ClusterError when the job ends
    first or ``deadline`` passes."""
    next_job_check = time.monotonic() + JOB_CHECK_EVERY
    while True:
        ids = registered()
        if len(ids) >= total:
            return ids
        state = None
        if time.monotonic() >= next_job_check:
            state = job.ended()
            next_job_check = time.monotonic() + JOB_CHECK_EVERY
        if state is not None:
            raise ClusterError(f"job {job.job} ended ({state}) before its engines "
                               f"registered ({len(ids)} of {total} engines are)" + job.tail())
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClusterError(f"the engines of job {job.job} did not all register within "
                               f"{timeout:g} s ({len(ids)} of {total} engines are)"
                               + job.tail())
        time.sleep(min(CHECK_EVERY, left))
