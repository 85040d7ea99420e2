"""A whole cluster in one Slurm allocation: the controller too.

``Cluster(controller='slurm', engines='slurm')`` (``ipcluster start
--controller=slurm --engines=slurm``) submits one job.  Its script starts
``ipcontroller`` on the job's first node and, once the controller is ready
(its ready line arrives on a FIFO: an event, not a wait), runs the engines
as one ``srun`` step of ``n`` tasks.  When that step ends, or the job is
cancelled, the controller ends with it.

The controller writes its FURL files into the profile's security folder,
which the submitting host must see (the compute nodes see the profile for
the engine FURL anyway, as they see the home folders on a cluster).  The
script also writes the ready line into ``run/controller-JOB.ready``; the
launcher waits for that file while it checks on the job, so a job that is
refused, fails or is cancelled is an error, not a timeout.

The controller listens on every interface of its node and writes the node's
host name into its FURLs (``--ip=0.0.0.0 --location=$(hostname)``), unless
``ip`` / ``location`` say otherwise.  ``stop`` cancels the job.
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plait.cluster import batch
from plait.security import ProfileDirs
from plait.wire.errors import ClusterError

SCRIPT = """#!/bin/sh
#SBATCH --job-name={name}
#SBATCH --ntasks={n}
#SBATCH --output={output}
{directives}
echo "plait: job $SLURM_JOB_ID started on $(hostname) at $(date +%s.%N)"
fifo="${{TMPDIR:-/tmp}}/plait-ready-$SLURM_JOB_ID-$$"
mkfifo -m 600 "$fifo" || exit 1
{controller} --notify-fd=3 3>"$fifo" &
controller=$!
read -r ready < "$fifo"
rm -f "$fifo"
case "$ready" in
  ready\\ *) ;;
  *) echo "plait: the controller did not start"; wait "$controller"; exit 1 ;;
esac
echo "$ready" > {ready_file}.part && mv {ready_file}.part {ready_file}
trap 'kill "$controller" 2>/dev/null' EXIT TERM INT
srun {engine}
"""


@dataclass
class AllocationJob:
    """The job holding the controller and engines; ``ready`` its ready file."""

    job: batch.BatchJob
    ready: Path

    def alive(self) -> bool:
        """Whether the job still runs, its controller ready (asked of the scheduler)."""
        return self.ready.exists() and self.job.ended() is None

    def to_state(self) -> dict[str, Any]:
        return {"job": self.job.job, "n": self.job.n, "output": str(self.job.output),
                "ready": str(self.ready)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AllocationJob:
        return cls(batch.BatchJob("slurm", str(state["job"]), int(state.get("n", 0)),
                                  Path(state.get("output", ""))), Path(state["ready"]))


def render(n: int, profile: str | None, dirs: ProfileDirs, output: Path, ready: Path,
           controller_args: list[str], options: batch.BatchOptions,
           python: str | None = None, enroll_file: Path | None = None) -> str:
    """The job script of the controller and ``n`` engines."""
    prefix, partition, account, walltime = batch.DIRECTIVES["slurm"]
    lines = [f"{prefix} {spelling.format(value)}" for spelling, value in (
        (partition, options.partition), (account, options.account), (walltime, options.time))
        if value]
    lines += [d if d.startswith("#") else f"{prefix} {d}" for d in options.directives]
    if options.template:
        raise ClusterError("a template replaces the engines' job script; the job of a "
                           "controller in the allocation has its own (give no template)")
    args = list(controller_args)
    given = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
    controller = shlex.join([python or sys.executable, "-m", "plait.scripts.ipcontroller",
                             *([f"--profile={profile}"] if profile else []), *args])
    if "--ip" not in given:
        controller += " --ip=0.0.0.0"
    if "--location" not in given and given.get("--ip", "0.0.0.0") in ("0.0.0.0", "::"):
        controller += ' --location="$(hostname)"'  # (else the FURLs name the ip given)
    return SCRIPT.format(name=f"plait-cluster-{profile or 'default'}", n=n, output=output,
                         directives="\n".join(lines), controller=controller,
                         ready_file=shlex.quote(str(ready)),
                         engine=batch.engine_command(profile, dirs, python, enroll_file))


def submit(n: int, profile: str | None, dirs: ProfileDirs, controller_args: list[str],
           options: batch.BatchOptions, deadline: float, timeout: float,
           python: str | None = None, enroll_file: Path | None = None) -> AllocationJob:
    """Submit the job; returns once its controller is ready (its FURL files are in
    ``dirs.security``).  ClusterError when sbatch refuses the job, the job ends
    first (quoting its output), or ``deadline`` passes; the job is cancelled then."""
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    output = dirs.log / f"slurm-cluster-{tag}.log"
    ready = dirs.run / f"controller-{tag}.ready"
    script = render(n, profile, dirs, output, ready, controller_args, options, python,
                    enroll_file)
    try:
        done = subprocess.run(batch.SUBMIT["slurm"], input=script, capture_output=True,
                              text=True, timeout=60)
    except FileNotFoundError:
        raise ClusterError("cannot submit the cluster's job: sbatch is not found (is Slurm "
                           "installed, and on PATH?)") from None
    except subprocess.TimeoutExpired:
        raise ClusterError("sbatch did not answer within 60 s") from None
    if done.returncode != 0:
        raise ClusterError(f"sbatch refused the cluster's job: "
                           f"{(done.stderr or done.stdout).strip()}")
    job = AllocationJob(batch.BatchJob("slurm", batch.job_id("slurm", done.stdout), n, output),
                        ready)
    try:
        _wait_ready(job, deadline, timeout)
    except BaseException:
        job.job.cancel()
        raise
    return job


def _wait_ready(job: AllocationJob, deadline: float, timeout: float) -> None:
    next_job_check = time.monotonic() + batch.JOB_CHECK_EVERY
    while not job.ready.exists():
        now = time.monotonic()
        if now >= deadline:
            raise ClusterError(f"the controller of job {job.job.job} was not ready within "
                               f"{timeout:g} s (is the job still waiting for nodes?)"
                               + job.job.tail())
        if now >= next_job_check:
            state = job.job.ended()
            if state is not None:
                raise ClusterError(f"job {job.job.job} ended ({state}) before its controller "
                                   f"was ready" + job.job.tail())
            next_job_check = now + batch.JOB_CHECK_EVERY
        time.sleep(batch.CHECK_EVERY)  # Slurm tells nobody: the shared folder is looked at
