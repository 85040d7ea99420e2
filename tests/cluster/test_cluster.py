"""Starting and stopping clusters with the three commands, as a user does."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from plait.scripts.ipcluster import pid_alive
from support.cluster import PYTHON, Cluster, make_env, run_cmd, wait_exit, wait_for_engines


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if int(hexport, 16) == port and fields[3] == "0A":
                found.append(addr)
    return found


def test_daemonized_cluster_is_ready_when_ipcluster_returns(cluster_factory):
    c = cluster_factory(4)
    mec = c.mec()
    assert mec.get_ids() == [0, 1, 2, 3]
    # every engine is a separate live process
    mec.execute("import os; pid = os.getpid()")
    pids = mec.pull("pid")
    assert len(set(pids)) == 4
    assert sorted(pids) == sorted(c.state()["engines"])


def test_state_folder_layout_and_permissions(cluster_factory):
    c = cluster_factory(1)
    sec = c.security
    assert stat.S_IMODE(sec.stat().st_mode) == 0o700
    for name in ("engine", "mec", "tc"):
        path = Path(c.furl_file(name))
        assert path.read_text().startswith("pb://")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for pem in sec.glob("*.pem"):
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    logs = sorted(p.name.split("-")[0] for p in (sec.parent / "log").glob("*.log"))
    assert logs == ["ipcontroller", "ipengine"]


def test_listens_on_loopback_only_by_default(cluster_factory):
    c = cluster_factory(1)
    for name in ("engine", "mec"):
        furl = Path(c.furl_file(name)).read_text().strip()
        host_port = furl.split("@")[1].split("/")[0]
        host, port = host_port.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert _listening(int(port)) == ["0100007F"]  # 127.0.0.1, not 0.0.0.0


def test_ipcluster_stop_ends_every_process(cluster_factory):
    c = cluster_factory(2)
    state = c.state()
    pids = [state["controller"], *state["engines"]]
    assert all(pid_alive(p) for p in pids)
    out = run_cmd(["ipcluster", "stop"], c.env)
    assert "stopped" in out.stdout
    assert all(wait_exit(p, 5) for p in pids)
    # stopping again says there is nothing to stop
    again = run_cmd(["ipcluster", "stop"], c.env, check=False)
    assert again.returncode == 1 and "no cluster is running" in again.stderr


def test_second_cluster_in_same_profile_is_refused(cluster_factory):
    c = cluster_factory(1)
    again = run_cmd(["ipcluster", "start", "-n", "1", "--daemonize"], c.env, check=False)
    assert again.returncode == 1
    assert "already running" in again.stderr


def test_timeout_fails_clearly_and_leaves_nothing_running(tmp_path):
    env = make_env(tmp_path / "p")
    out = run_cmd(["ipcluster", "start", "-n", "2", "--daemonize", "--timeout", "0.05"],
                  env, check=False)
    assert out.returncode == 1
    assert "error:" in out.stderr and ("not ready" in out.stderr
                                       or "engines registered within 0.05 s" in out.stderr)
    # nothing of ours survives: no process has this PLAIT_DIR in its environment
    mine = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if f"PLAIT_DIR={tmp_path / 'p'}".encode() in environ.split(b"\0"):
            mine.append(int(proc.name))
    assert [p for p in mine if pid_alive(p)] == []


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_foreground_ipcluster_stops_everything_on_ctrl_c(tmp_path, how):
    env = make_env(tmp_path / "p")
    # stderr goes to a file: a pipe nobody reads fills up once the processes have
    # written 64 KiB to it (a busy machine's warnings), and then they block for ever
    errors = open(tmp_path / "stderr", "w")
    proc = subprocess.Popen(
        [PYTHON, "-m", "plait.scripts.ipcluster", "-n", "2"], env=env,
        stdout=subprocess.PIPE, stderr=errors, text=True, start_new_session=True,
    )
    errors.close()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "2 engines [0, 1]" in text and "MultiEngineClient()" in text
        c = Cluster(tmp_path / "p", env, 2)
        state = c.state()
        pids = [state["controller"], *state["engines"]]
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        else:
            proc.terminate()  # ipcluster alone: it must stop its children itself
        assert proc.wait(10) == 0, (tmp_path / "stderr").read_text()
        assert all(wait_exit(p, 5) for p in pids)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


_COLLECTION_PROBE = """
import gc, weakref
class _Node: pass
_a, _b = _Node(), _Node()
_a.b, _b.a = _b, _a
_gone = weakref.ref(_a)
del _a, _b
gc.collect()
collected, frozen, tracked = _gone() is None, gc.get_freeze_count(), len(gc.get_objects())
"""


def _check_collection(mec, targets) -> None:
    """The engines' startup objects are out of the collector's way (each full
    pass walks only what came later), and a cycle the user's code drops is
    still collected."""
    mec.execute(_COLLECTION_PROBE, targets=targets)
    for collected, frozen, tracked in zip(*(mec.pull(name, targets=targets) for name in
                                            ("collected", "frozen", "tracked")), strict=True):
        assert collected
        assert frozen > 10_000 and tracked < frozen / 4, (frozen, tracked)


def test_engines_collect_garbage_without_walking_their_startup_objects(cluster_factory):
    c = cluster_factory(2)
    _check_collection(c.mec(), "all")


@pytest.fixture
def controller(tmp_path):
    """An ``ipcontroller`` in the foreground (as a process) with its env."""
    procs: list[subprocess.Popen] = []

    def start(*args: str, env: dict | None = None) -> subprocess.Popen:
        env = env or make_env(tmp_path / "p")
        p = subprocess.Popen(
            [PYTHON, "-m", "plait.scripts.ipcontroller", *args], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        procs.append(p)
        line = p.stdout.readline()
        assert "ready" in line, (line, p.stderr.read() if p.poll() is not None else "")
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _engines(env: dict, n: int, *args: str) -> list[subprocess.Popen]:
    return [
        subprocess.Popen([PYTHON, "-m", "plait.scripts.ipengine", *args], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(n)
    ]


def test_ipcontroller_then_ipengines(controller, tmp_path):
    env = make_env(tmp_path / "p")
    ctl = controller(env=env)
    engines = _engines(env, 3)
    try:
        from plait.kernel import client

        os.environ["PLAIT_DIR"] = env["PLAIT_DIR"]
        try:
            mec = client.MultiEngineClient()
        finally:
            del os.environ["PLAIT_DIR"]
        assert wait_for_engines(mec, 3) == [0, 1, 2]
        assert mec.execute("x = 1", targets=2)[0]["id"] == 2
        _check_collection(mec, [0, 1, 2])  # (not forked: each froze its own)
        # engines exit when their controller is gone for good
        ctl.kill()
        for e in engines:
            assert e.wait(10) == 0
    finally:
        for e in engines:
            e.kill()


def test_ipengine_with_explicit_furl_file(controller, tmp_path):
    env = make_env(tmp_path / "p")
    controller(env=env)
    furl = Path(env["PLAIT_DIR"]) / "profile_default" / "security" / "ipcontroller-engine.furl"
    copy = tmp_path / "elsewhere.furl"
    copy.write_text(furl.read_text())
    other_env = make_env(tmp_path / "other")  # a profile with no FURL files at all
    engines = _engines(other_env, 1, f"--furl-file={copy}")
    try:
        from plait.kernel import client

        mec = client.MultiEngineClient(str(furl.parent / "ipcontroller-mec.furl"))
        assert wait_for_engines(mec, 1) == [0]
    finally:
        for e in engines:
            e.kill()


def test_ipengine_without_furl_file_says_what_is_missing(tmp_path):
    env = make_env(tmp_path / "p")
    out = subprocess.run([PYTHON, "-m", "plait.scripts.ipengine"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "ipcontroller-engine.furl" in out.stderr and "does not exist" in out.stderr


def test_fixed_ports_keep_furls_across_restarts(controller, tmp_path):
    from foolscap.util import allocate_tcp_port

    env = make_env(tmp_path / "p")
    cport, eport = allocate_tcp_port(), allocate_tcp_port()
    args = (f"--client-port={cport}", f"--engine-port={eport}")
    first = controller(*args, env=env)
    sec = Path(env["PLAIT_DIR"]) / "profile_default" / "security"
    before = {f.name: f.read_text() for f in sec.glob("*.furl")}
    first.terminate()
    first.wait()
    controller(*args, env=env)
    after = {f.name: f.read_text() for f in sec.glob("*.furl")}
    assert before == after
    assert f":{cport}/" in after["ipcontroller-mec.furl"]
    assert f":{eport}/" in after["ipcontroller-engine.furl"]
    # and the old FURL file still works
    from plait.kernel import client

    assert client.MultiEngineClient(str(sec / "ipcontroller-mec.furl")).get_ids() == []


def test_new_furls_revoke_the_old_ones(controller, tmp_path):
    from foolscap.util import allocate_tcp_port

    from plait.kernel import client

    env = make_env(tmp_path / "p")
    args = (f"--client-port={allocate_tcp_port()}", f"--engine-port={allocate_tcp_port()}")
    first = controller(*args, env=env)
    mec_file = Path(env["PLAIT_DIR"]) / "profile_default" / "security" / "ipcontroller-mec.furl"
    old = mec_file.read_text().strip()
    first.terminate()
    first.wait()
    controller(*args, "--new-furls", env=env)
    new = mec_file.read_text().strip()
    assert new != old and new.rsplit("/", 1)[0] == old.rsplit("/", 1)[0]  # same tub and port
    assert client.MultiEngineClient(new).get_ids() == []
    with pytest.raises(client.PlaitConnectionError, match="does not know this FURL's secret"):
        client.MultiEngineClient(old)


def test_ip_and_location_choose_interface_and_furl_host(controller, tmp_path):
    env = make_env(tmp_path / "p")
    controller("--ip=127.0.0.2", "--location=127.0.0.2", env=env)
    sec = Path(env["PLAIT_DIR"]) / "profile_default" / "security"
    furl = (sec / "ipcontroller-mec.furl").read_text()
    assert "@127.0.0.2:" in furl
    port = int(furl.split("@127.0.0.2:")[1].split("/")[0])
    assert _listening(port) == ["0200007F"]
    engines = _engines(env, 1)
    try:
        from plait.kernel import client

        mec = client.MultiEngineClient(str(sec / "ipcontroller-mec.furl"))
        assert wait_for_engines(mec, 1) == [0]
    finally:
        for e in engines:
            e.kill()


def test_all_interfaces_without_location_is_refused(tmp_path):
    env = make_env(tmp_path / "p")
    out = subprocess.run([PYTHON, "-m", "plait.scripts.ipcontroller", "--ip=0.0.0.0"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "--location" in out.stderr


def test_profiles_are_separate(tmp_path):
    env = make_env(tmp_path / "p")
    a = Cluster(tmp_path / "p", env, 1, profile="alpha")
    b = Cluster(tmp_path / "p", env, 2, profile="beta")
    try:
        a.start()
        b.start()
        from plait.kernel import client

        os.environ["PLAIT_DIR"] = env["PLAIT_DIR"]
        try:
            assert client.MultiEngineClient(profile="alpha").get_ids() == [0]
            assert client.MultiEngineClient(profile="beta").get_ids() == [0, 1]
        finally:
            del os.environ["PLAIT_DIR"]
    finally:
        a.stop()
        b.stop()


def test_ipcluster_short_form_and_help():
    out = subprocess.run([PYTHON, "-m", "plait.scripts.ipcluster", "--help"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "ipcluster -n 4" in out.stdout
    assert sys.executable


def test_stop_never_signals_a_process_that_reused_a_recorded_pid(tmp_path):
    import json

    env = make_env(tmp_path / "p")
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        run_dir = tmp_path / "p" / "profile_default" / "run"
        run_dir.mkdir(parents=True)
        # a stale state file whose controller pid now belongs to someone else
        (run_dir / "ipcluster.json").write_text(json.dumps({
            "controller": bystander.pid, "engines": [], "ipcluster": None,
            "started": {str(bystander.pid): "1"},
        }))
        out = run_cmd(["ipcluster", "stop"], env, check=False)
        assert out.returncode == 1 and "no cluster is running" in out.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_terminate_works_without_pidfds(monkeypatch):
    from plait.scripts import ipcluster

    stubborn = subprocess.Popen(
        [PYTHON, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                       "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    polite = subprocess.Popen(["sleep", "60"])
    assert stubborn.stdout.readline() == "ready\n"
    monkeypatch.delattr(os, "pidfd_open")
    ipcluster.terminate([stubborn.pid, polite.pid], grace=0.5)
    assert polite.wait(5) == -signal.SIGTERM
    assert stubborn.wait(5) == -signal.SIGKILL


@pytest.mark.parametrize("db", ["memory", "none", "sqlite"])
def test_task_ids_never_repeat_for_a_profile_after_a_controller_is_killed(controller, tmp_path,
                                                                          db):
    from foolscap.util import allocate_tcp_port

    from plait.kernel import client

    env = make_env(tmp_path / "p")
    args = (f"--client-port={allocate_tcp_port()}", f"--engine-port={allocate_tcp_port()}",
            f"--db={db}")
    first = controller(*args, env=env)
    tc_file = Path(env["PLAIT_DIR"]) / "profile_default" / "security" / "ipcontroller-tc.furl"
    engines = _engines(env, 1)
    try:
        tc = client.TaskClient(str(tc_file))
        old = tc.run(client.StringTask("x = 'first run'", pull="x"))
        assert tc.get_task_result(old, block=True).ns.x == "first run"
        first.kill()  # SIGKILL: no chance to save anything at the end
        first.wait()
        controller(*args, env=env)
        tc = client.TaskClient(str(tc_file))
        new = tc.run(client.StringTask("x = 'second run'", pull="x"))
        assert new != old
        if db != "sqlite":  # (the SQLite hub keeps the first run's result, under its id)
            with pytest.raises(client.InvalidTaskID):
                tc.get_task_result(old)
    finally:
        for e in engines:
            e.kill()
            e.wait()
