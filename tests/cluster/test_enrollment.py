"""Enrollment: a copied engine FURL alone makes nobody an engine.

The controllers that ipcluster starts admit only engines showing a one-time
enrollment secret (or, claiming an id back, that engine's member key).
Each test runs real controllers and engines over TLS on loopback.  That
replacements (``--restart-engines``) and engines rejoining a restarted
controller keep their ids without a new secret, their member keys admitting
them, is shown by test_restart_engines and test_controller_restart, whose
clusters admit enrolled engines only.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from support.cluster import PYTHON, enroll_flag, run_cmd, wait_for_engines


def _engine(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run an ipengine to its end (a refused one exits at once)."""
    return subprocess.run([PYTHON, "-m", "plait.scripts.ipengine", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _copied(c, tmp_path: Path) -> str:
    """The engine FURL as a stranger has it: a copy of the file, elsewhere."""
    path = tmp_path / "stolen-engine.furl"
    shutil.copy(c.furl_file("engine"), path)
    path.chmod(0o600)
    return f"--furl-file={path}"


def test_a_copied_engine_furl_alone_makes_nobody_an_engine(cluster_factory, tmp_path):
    c = cluster_factory(1)
    done = _engine(c.env, _copied(c, tmp_path))
    assert done.returncode == 2
    assert "refused this engine: this controller admits enrolled engines only, and it " \
           "showed no enrollment secret" in done.stderr
    assert "ipcluster enroll" in done.stderr  # ... and how to get one
    assert "Traceback" not in done.stderr
    # nothing reached the users: the cluster has its one engine, and works
    mec = c.mec()
    assert mec.get_ids() == [0]
    assert mec.execute("x = 1", targets=0)[0]["id"] == 0
    log = (c.plait_dir / "profile_default" / "log")
    assert any("an engine was refused" in p.read_text() for p in log.glob("ipcontroller*"))


def test_claiming_an_engine_id_needs_that_engines_member_key(cluster_factory, tmp_path):
    c = cluster_factory(1)
    mec = c.mec()
    mec.execute("import os; pid = os.getpid()")
    before = mec.pull("pid")
    done = _engine(c.env, _copied(c, tmp_path), "--engine-id=0")
    assert done.returncode == 2
    assert "this one claims the id of engine 0 without that engine's member key" in done.stderr
    # nor does a fresh secret: it admits a new engine, not one into engine 0's place
    done = _engine(c.env, _copied(c, tmp_path), c.enroll_flag(), "--engine-id=0")
    assert done.returncode == 2
    assert "claims the id of engine 0 without that engine's member key" in done.stderr
    assert mec.get_ids() == [0] and mec.pull("pid") == before  # engine 0 kept its place


def test_secrets_issued_by_ipcluster_enroll_admit_each_engine_once(cluster_factory, tmp_path):
    c = cluster_factory(1)
    secrets = tmp_path / "secrets"
    said = run_cmd(["ipcluster", "enroll", "-n", "2", f"--file={secrets}"], c.env).stdout
    assert f"2 one-time enrollment secrets in {secrets}" in said
    assert f"ipengine --enroll-file={secrets}" in said
    assert secrets.stat().st_mode & 0o777 == 0o600
    lines = secrets.read_text().split()
    assert len(lines) == 2
    used = tmp_path / "used"
    used.write_text(lines[0] + "\n")
    used.chmod(0o600)
    # two engines share the file: each takes (and removes) a line of its own
    engines = [subprocess.Popen([PYTHON, "-m", "plait.scripts.ipengine",
                                 f"--enroll-file={secrets}"], env=c.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(2)]
    try:
        mec = c.mec()
        assert wait_for_engines(mec, 3) == [0, 1, 2]
        assert secrets.read_text().split() == []  # (each line blanked where it was)
        # a secret copied after it was used admits nobody
        done = _engine(c.env, f"--enroll-file={used}")
        assert done.returncode == 2
        assert "its enrollment secret was used before" in done.stderr
        # and an empty file says so before it tries
        done = _engine(c.env, f"--enroll-file={secrets}")
        assert done.returncode == 1 and "has no secret left" in done.stderr
        assert mec.get_ids() == [0, 1, 2]
    finally:
        for engine in engines:
            engine.kill()
            engine.wait()


def test_a_secret_of_another_profile_or_a_bad_file_is_refused_clearly(cluster_factory,
                                                                       tmp_path):
    one, other = cluster_factory(1), cluster_factory(1)
    flag = enroll_flag(other.security)  # issued for the other controller
    done = _engine(one.env, flag)
    assert done.returncode == 2
    assert "its enrollment secret is refused: it was not issued for this controller" \
        in done.stderr
    readable = Path(flag.split("=", 1)[1])
    readable.chmod(0o644)
    done = _engine(one.env, f"--enroll-file={readable}")
    assert done.returncode == 1 and "may be read by other users (mode 0644)" in done.stderr
    garbage = tmp_path / "garbage"
    garbage.write_text("not-a-secret\n")
    garbage.chmod(0o600)
    done = _engine(one.env, f"--enroll-file={garbage}")
    assert done.returncode == 2 and "it is not an enrollment secret" in done.stderr
    assert one.mec().get_ids() == [0]


def test_a_controller_started_by_hand_admits_enrolled_engines_with_enroll(plait_env, tmp_path):
    """``ipcontroller --enroll`` for engines started by hand, with ``ipcluster enroll``."""
    from plait.kernel import client

    controller = subprocess.Popen([PYTHON, "-m", "plait.scripts.ipcontroller", "--enroll",
                                   "--notify-fd=1"], env=plait_env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
    engines: list[subprocess.Popen] = []
    try:
        assert controller.stdout is not None
        for line in controller.stdout:  # its ready notice: "ready FURL"
            if line.startswith("ready "):
                break
        secrets = tmp_path / "s"
        run_cmd(["ipcluster", "enroll", f"--file={secrets}"], plait_env)
        done = _engine(plait_env)
        assert done.returncode == 2 and "admits enrolled engines only" in done.stderr
        engines.append(subprocess.Popen([PYTHON, "-m", "plait.scripts.ipengine",
                                         f"--enroll-file={secrets}"], env=plait_env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        mec = client.MultiEngineClient()
        assert wait_for_engines(mec, 1) == [0]
        assert mec.execute("y = 2")[0]["id"] == 0
    finally:
        for proc in [*engines, controller]:
            proc.kill()
            proc.wait()


def test_ipcluster_enroll_refuses_an_existing_file(plait_env, tmp_path):
    existing = tmp_path / "s"
    existing.write_text("keep me\n")
    done = run_cmd(["ipcluster", "enroll", f"--file={existing}"], plait_env, check=False)
    assert done.returncode == 1 and "exists: give a new file" in done.stderr
    assert existing.read_text() == "keep me\n"


def test_a_rank_slot_outside_a_job_and_the_secrets_left_behind(cluster_factory, tmp_path):
    """--enroll-slot=rank needs an MPI or batch job; ipcluster stop removes the
    launchers' secrets files (those of an ipcluster killed before it could, too)."""
    c = cluster_factory(1)
    flag = c.enroll_flag()
    env = {k: v for k, v in c.env.items() if k not in ("OMPI_COMM_WORLD_RANK", "PMI_RANK",
                                                     "PMIX_RANK", "SLURM_PROCID")}
    done = _engine(env, flag, "--enroll-slot=rank")
    assert done.returncode == 1
    assert "--enroll-slot=rank, but this engine runs in no MPI or batch job" in done.stderr
    left = c.security / "enroll-12345-abcd.secrets"
    left.write_text("pe1-x\n")
    run_cmd(["ipcluster", "stop", f"--profile={c.profile}"], c.env)
    assert not left.exists()
