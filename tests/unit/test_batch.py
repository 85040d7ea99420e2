"""The batch scripts and commands of plait.cluster.batch, for the systems not run
here (PBS, LSF; SGE when Grid Engine is absent): what they would submit."""

from __future__ import annotations

import pytest

from plait.cluster import batch
from plait.security import ProfileDirs
from plait.wire.errors import ClusterError


@pytest.fixture
def dirs(tmp_path):
    root = tmp_path / "profile_lab"
    d = ProfileDirs(root, root / "security", root / "log", root / "run")
    for path in (d.root, d.security, d.log, d.run):
        path.mkdir(parents=True)
    return d


OPTIONS = batch.BatchOptions(partition="short", account="proj7", time="01:00:00",
                             directives=["--mem=4G"])


@pytest.mark.parametrize("system, wanted", [
    ("slurm", ["#SBATCH --ntasks=4", "#SBATCH --partition=short", "#SBATCH --account=proj7",
               "#SBATCH --time=01:00:00", "#SBATCH --mem=4G", "srun "]),
    ("sge", ["#$ -t 1-4", "#$ -q short", "#$ -A proj7", "#$ -l h_rt=01:00:00", "#$ -V"]),
    ("pbs", ["#PBS -J 1-4", "#PBS -q short", "#PBS -A proj7", "#PBS -l walltime=01:00:00"]),
    ("lsf", ["#BSUB -J plait-engines-lab[1-4]", "#BSUB -q short", "#BSUB -P proj7",
             "#BSUB -W 01:00:00"]),
])
def test_each_system_gets_its_own_directives_and_one_engine_command(dirs, tmp_path, system,
                                                                    wanted):
    script = batch.render(system, 4, "lab", dirs, tmp_path / "out.log", OPTIONS)
    assert script.startswith("#!/bin/sh\n")
    for line in wanted:
        assert line in script, (line, script)
    engine = [line for line in script.splitlines() if "plait.scripts.ipengine" in line]
    assert len(engine) == 1 and "--profile=lab" in engine[0]
    assert f"--furl-file={dirs.security / 'ipcontroller-engine.furl'}" in engine[0]
    assert str(tmp_path / "out.log") in script


@pytest.mark.parametrize("system, printed, job", [
    ("slurm", "4242\n", "4242"), ("slurm", "4242;cluster\n", "4242"),
    ("sge", "77.1-4:1\n", "77"), ("pbs", "123[].pbsserver\n", "123[].pbsserver"),
    ("lsf", "Job <881> is submitted to queue <normal>.\n", "881"),
])
def test_the_job_id_is_read_from_what_each_submit_command_prints(system, printed, job):
    assert batch.job_id(system, printed) == job


def test_no_job_id_is_a_clear_error():
    with pytest.raises(ClusterError, match="cannot find the job id in what bsub printed"):
        batch.job_id("lsf", "Request aborted by esub.")


def test_a_template_of_ones_own(dirs, tmp_path):
    own = tmp_path / "job.sh"
    own.write_text("#!/bin/bash\n#PBS -l select={n}:ncpus=1\n{directives}\nmpiexec {engine}\n")
    script = batch.render("pbs", 8, "lab", dirs, tmp_path / "o", batch.BatchOptions(
        template=str(own)))
    assert "#PBS -l select=8:ncpus=1" in script and "mpiexec " in script
    own.write_text("{nope}\n")
    with pytest.raises(ClusterError, match="bad placeholder"):
        batch.render("pbs", 8, "lab", dirs, tmp_path / "o", batch.BatchOptions(
            template=str(own)))


def test_a_missing_submit_command_says_so(dirs, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ClusterError, match="qsub is not found"):
        batch.submit("pbs", 2, None, dirs, batch.BatchOptions())


def test_unknown_batch_options_are_refused():
    with pytest.raises(ClusterError, match="unknown batch options"):
        batch.BatchOptions.from_dict({"nodes": 3})
