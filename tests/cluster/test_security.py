"""Capabilities: what each FURL grants, and what a stranger cannot do."""

from __future__ import annotations

import re
import socket
import ssl
import time
from pathlib import Path

import pytest

from plait.kernel import client
from plait.security import client_tub
from support import in_reactor


def _ref(furl: str):
    return in_reactor(client_tub().getReference, furl, timeout=30)


def _furl(c, name: str) -> str:
    return Path(c.furl_file(name)).read_text().strip()


def _host_port(furl: str) -> tuple[str, int]:
    host, port = furl.split("@")[1].split("/")[0].rsplit(":", 1)
    return host, int(port)


def test_wrong_secret_is_refused_quickly_and_clearly(cluster4, tmp_path):
    good = _furl(cluster4, "mec")
    bad = good.rsplit("/", 1)[0] + "/" + "a" * 32
    path = tmp_path / "bad.furl"
    path.write_text(bad)
    path.chmod(0o600)
    t0 = time.monotonic()
    with pytest.raises(client.PlaitConnectionError) as info:
        client.MultiEngineClient(str(path))
    assert time.monotonic() - t0 < 5
    msg = str(info.value)
    assert "does not know this FURL's secret: the FURL is stale" in msg and str(path) in msg


def test_wrong_tub_id_is_refused_quickly_and_clearly(cluster4):
    good = _furl(cluster4, "mec")
    tubid = good[5:].split("@")[0]
    bad = good.replace(tubid, "b" * len(tubid))
    t0 = time.monotonic()
    with pytest.raises(client.PlaitConnectionError, match="a controller answers there, but not "
                                                          "the one this FURL names"):
        client.MultiEngineClient(bad)
    assert time.monotonic() - t0 < 5


def _written(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "given.furl"
    path.write_text(text + "\n")
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize("cut, message", [
    (lambda f: "pb://", "is incomplete: it has no tub id and no address"),
    (lambda f: f[:len("pb://") + 20], "is incomplete: it has no tub id and no address"),
    (lambda f: f.split("@")[0] + "@" + f.split("@")[1][:5], "has a bad address"),
    (lambda f: f.rsplit("/", 1)[0], "has no secret (nothing after its address)"),
    (lambda f: f.rsplit("/", 1)[0] + "/", "has no secret (nothing after its address)"),
    (lambda f: "pb://@@@", "has a bad tub id ''"),
    (lambda f: f.replace(f[5:9], "ABCD", 1), "has a bad tub id"),
])
def test_a_broken_furl_file_says_what_is_wrong_with_it(cluster4, tmp_path, cut, message):
    path = _written(tmp_path, cut(_furl(cluster4, "mec")))
    for connect in (client.MultiEngineClient, client.TaskClient):
        with pytest.raises(ValueError, match=re.escape(message)) as info:
            connect(path)
        assert path in str(info.value)
    assert cluster4.mec().get_ids() == [0, 1, 2, 3]


@pytest.mark.parametrize("given, needed, client_kind", [
    ("engine", "mec", "MultiEngineClient"), ("tc", "mec", "MultiEngineClient"),
    ("mec", "tc", "TaskClient"), ("engine", "client", "plait.parallel.Client"),
])
def test_a_furl_of_the_wrong_kind_says_which_it_is_and_which_is_needed(
        cluster4, tmp_path, given, needed, client_kind):
    import plait.parallel as ipp

    path = _written(tmp_path, _furl(cluster4, given))
    make = {"mec": client.MultiEngineClient, "tc": client.TaskClient,
            "client": ipp.Client}[needed]
    with pytest.raises(client.PlaitConnectionError) as info:
        make(path)
    message = str(info.value)
    assert f"{path} is the wrong kind of FURL for a {client_kind}" in message
    assert f"the FURL of ipcontroller-{given}.furl" in message
    assert f"the FURL of ipcontroller-{needed}.furl" in message


def test_an_engine_given_a_client_furl_says_so(cluster4, tmp_path):
    import subprocess
    import sys

    path = _written(tmp_path, _furl(cluster4, "mec"))
    done = subprocess.run([sys.executable, "-m", "plait.scripts.ipengine", f"--furl-file={path}"],
                          capture_output=True, text=True, timeout=60, env=cluster4.env)
    assert done.returncode != 0
    assert "the FURL is the wrong kind for an engine" in done.stderr
    assert cluster4.mec().get_ids() == [0, 1, 2, 3]


def test_nothing_listening_says_so(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # (closed again: nothing listens there)
    path = _written(tmp_path, f"pb://{'a' * 32}@127.0.0.1:{port}/{'b' * 32}")
    with pytest.raises(client.PlaitConnectionError, match="nothing listens there: is the "
                                                          "controller running"):
        client.MultiEngineClient(path)


def test_a_furl_file_others_may_read_works_with_a_warning(cluster4, tmp_path):
    path = _written(tmp_path, _furl(cluster4, "mec"), mode=0o644)
    with pytest.warns(UserWarning, match=r"readable by other users \(mode 0644\).*chmod 600"):
        mec = client.MultiEngineClient(path)
    assert mec.get_ids() == [0, 1, 2, 3]


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_furl_file_others_may_write_is_refused(cluster4, tmp_path, mode):
    path = _written(tmp_path, _furl(cluster4, "mec"), mode=mode)
    with pytest.raises(PermissionError, match=f"writable by other users \\(mode {mode:04o}\\)"):
        client.MultiEngineClient(path)


def test_missing_furl_file_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*controller running"):
        client.MultiEngineClient(str(tmp_path / "nope.furl"))


def test_client_furl_cannot_register_engines(cluster4):
    ref = _ref(_furl(cluster4, "mec"))
    with pytest.raises(Exception, match="register_engine"):
        in_reactor(ref.callRemote, "register_engine", None, "x", b"P")
    assert cluster4.mec().get_ids() == [0, 1, 2, 3]


def test_engine_furl_cannot_drive_engines(cluster4):
    ref = _ref(_furl(cluster4, "engine"))
    for method, args in (("execute", ("1", (True, []), True)), ("get_ids", ())):
        with pytest.raises(Exception, match=method):
            in_reactor(ref.callRemote, method, *args)


def test_bad_arguments_get_a_clear_error_and_the_connection_survives(mec):
    ref = mec.asynchronous._remote
    with pytest.raises(Exception, match="Violation"):
        in_reactor(ref.callRemote, "execute", 42, (True, []), True)
    assert mec.get_ids() == [0, 1, 2, 3]


@pytest.mark.parametrize("payload", [
    b"\x00\xff garbage \x13\x37" * 100,
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"",
])
def test_junk_on_every_controller_port_leaves_it_working(cluster4, payload):
    ports = {_host_port(_furl(cluster4, n)) for n in ("engine", "mec", "tc")}
    for host, port in ports:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
    mec = cluster4.mec()
    assert mec.get_ids() == [0, 1, 2, 3]
    assert mec.execute("pass")[0]["number"] >= 1


def test_bare_tls_hello_leaves_it_working(cluster4):
    host, port = _host_port(_furl(cluster4, "mec"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                s.sendall(b"hello")
        except (ssl.SSLError, OSError):
            pass  # foolscap speaks its own negotiation first: refusing is fine
    assert cluster4.mec().get_ids() == [0, 1, 2, 3]


def test_junk_on_the_data_port_leaves_it_working(cluster4):
    import numpy as np

    mec = cluster4.mec()
    addr = in_reactor(mec.asynchronous._remote_call, "open_upload", 10, 1)[2]
    with socket.create_connection(tuple(addr), timeout=5) as s:
        s.sendall(b"x" * 1000)
    big = np.arange(300_000, dtype=np.float64)  # above the inline limit
    mec.push({"big": big}, targets=0)
    assert np.array_equal(mec.pull("big", targets=0)[0], big)


class _Boom:
    """Unpickling this would run a command; a controller must never do it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_engine_furl_cannot_make_the_controller_unpickle_code(cluster4, tmp_path):
    import pickle

    from plait.adapters.engine_server import FoolscapEngine

    marker = tmp_path / "pwned"
    evil = pickle.dumps({"x": _Boom(str(marker))})
    ref = _ref(_furl(cluster4, "engine"))
    # registering with pickled code as properties is refused, and nothing ran
    with pytest.raises(Exception, match="may not load"):
        in_reactor(ref.callRemote, "register_engine", FoolscapEngine(None), "u" * 36, evil, b"")
    # the registrar has no way to set another engine's properties any more
    with pytest.raises(Exception, match="set_properties"):
        in_reactor(ref.callRemote, "set_properties", 0, evil)
    assert not marker.exists()
    assert cluster4.mec().get_ids() == [0, 1, 2, 3]


def test_properties_are_plain_data(mec):
    import threading

    with pytest.raises(client.SerializationError, match="only plain data"):
        mec.set_properties({"lock": threading.Lock()}, targets=0)
    mec.set_properties({"ram": 2**33, "tags": ["gpu", "ssd"]}, targets=0)
    assert mec.get_properties(["ram", "tags"], targets=0) == [{"ram": 2**33, "tags": ["gpu", "ssd"]}]
    mec.clear_properties(targets=0)


def test_refused_and_failed_pushes_do_not_leave_blobs_behind(cluster_factory):
    """A large push refused (bad target) or not delivered (engine killed) is freed."""
    import numpy as np

    from plait.wire.errors import InvalidEngineID

    c = cluster_factory(2)
    mec = c.mec()
    big = np.zeros(20_000_000 // 8)  # 20 MB: travels as a blob
    controller_pid = c.state()["controller"]

    def rss_mb() -> float:
        for line in Path(f"/proc/{controller_pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    mec.push({"warm": big}, targets=0)  # the relay's buffers exist now
    before = rss_mb()
    for _ in range(5):
        with pytest.raises(InvalidEngineID):
            mec.push({"big": big}, targets=[0, 99])
    # a push queued behind a long command, whose engine is then killed
    mec.execute("import time", targets=1)
    stuck = mec.execute("time.sleep(60)", targets=1, block=False)
    queued = mec.push({"big": big}, targets=1, block=False)
    mec.kill(targets=1)
    for pr in (stuck, queued):
        with pytest.raises(client.CompositeError, match="EngineError"):
            pr.get_result()
    # nothing kept: 6 blobs of 20 MB would show as ~120 MB
    assert rss_mb() - before < 60


def test_the_profile_its_logs_and_records_are_private(cluster4):
    import stat

    root = Path(cluster4.env["PLAIT_DIR"]) / "profile_default"
    for folder in (root, root / "security", root / "log", root / "run"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    logs = list((root / "log").glob("*.log"))
    assert logs and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in logs)


def test_an_older_profile_open_to_others_is_made_private(tmp_path, monkeypatch):
    import stat

    from plait.security import profile_dirs

    monkeypatch.setenv("PLAIT_DIR", str(tmp_path))
    root = tmp_path / "profile_old"
    (root / "log").mkdir(parents=True, mode=0o755)
    root.chmod(0o755)
    (root / "log").chmod(0o755)
    dirs = profile_dirs("old")
    assert stat.S_IMODE(dirs.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(dirs.log.stat().st_mode) == 0o700


def test_idle_strangers_cannot_lock_clients_out(cluster4):
    import resource
    import selectors

    from plait.security._tub import MAX_NEGOTIATING

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    controller = cluster4.state()["controller"]
    limits = Path(f"/proc/{controller}/limits").read_text()
    [line] = [ln for ln in limits.splitlines() if ln.startswith("Max open files")]
    assert line.split()[3] == line.split()[4]  # the soft limit was raised to the hard one
    host, port = _host_port(_furl(cluster4, "mec"))
    strangers = [socket.create_connection((host, port), timeout=5) for _ in range(1100)]
    try:
        t0 = time.monotonic()
        mec = client.MultiEngineClient(cluster4.furl_file("mec"))  # a client still gets in
        assert mec.get_ids() == [0, 1, 2, 3]
        assert time.monotonic() - t0 < 10
        # the controller keeps only the newest strangers, and those for 10 s at most
        with selectors.DefaultSelector() as sel:
            for s in strangers:
                sel.register(s, selectors.EVENT_READ)
            closed: set[socket.socket] = set()
            deadline = time.monotonic() + 30
            while len(closed) < len(strangers) and time.monotonic() < deadline:
                for key, _ in sel.select(1):
                    try:
                        data = key.fileobj.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        closed.add(key.fileobj)
                        sel.unregister(key.fileobj)
        assert len(closed) == len(strangers) and len(strangers) > MAX_NEGOTIATING
    finally:
        for s in strangers:
            s.close()
    assert cluster4.mec().get_ids() == [0, 1, 2, 3]
