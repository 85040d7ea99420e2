"""The commands say where the status page is: ``ipcontroller`` and ``ipcluster
start`` print its URL, the one in the security folder and in ``rc.dashboard_url``."""

from __future__ import annotations

import subprocess
import urllib.request

import plait.parallel as ipp
from support.cluster import PYTHON, make_env, run_cmd


def _page_answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.status == 200 and b"<html" in answer.read().lower()


def test_ipcontroller_prints_the_status_page_url(tmp_path):
    env = make_env(tmp_path)
    proc = subprocess.Popen([PYTHON, "-m", "plait.scripts.ipcontroller"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # (until it says where its page is)
            lines.append(line)
            if line.startswith("status page: "):
                break
        assert lines and lines[-1].startswith("status page: http://127.0.0.1:"), lines
        url = lines[-1].removeprefix("status page: ").strip()
        security = tmp_path / "profile_default" / "security"
        assert (security / "ipcontroller-status.url").read_text().strip() == url
        assert "?token=" in url and _page_answers(url)
    finally:
        proc.terminate()
        proc.wait(30)


def test_ipcluster_start_prints_the_status_page_url(tmp_path):
    env = make_env(tmp_path)
    out = run_cmd(["ipcluster", "start", "-n", "1", "--daemonize", "--timeout", "60"], env)
    try:
        printed = [line.removeprefix("status page: ").strip()
                   for line in out.stdout.splitlines() if line.startswith("status page: ")]
        assert len(printed) == 1 and printed[0].startswith("http://127.0.0.1:"), out.stdout
        security = tmp_path / "profile_default" / "security"
        rc = ipp.Client(str(security / "ipcontroller-client.furl"))
        try:
            assert rc.dashboard_url == printed[0]
        finally:
            rc.close()
        assert _page_answers(printed[0])
    finally:
        run_cmd(["ipcluster", "stop"], env)


def test_the_page_shows_what_finished_before_it_served(tmp_path, monkeypatch):
    """The page starts half a second after the controller (twisted.web's import
    would make the engines wait); what finished before counts from the start."""
    import json

    import pytest

    monkeypatch.setenv("PLAIT_DIR", str(tmp_path))
    with ipp.Cluster(n=1) as rc:
        ar = rc.load_balanced_view().apply_async(divmod, 1, 0)  # at once
        with pytest.raises(ipp.RemoteError):
            ar.get(timeout=30)
        base, token = rc.dashboard_url.split("?token=")
        with urllib.request.urlopen(f"{base}status.json?token={token}", timeout=30) as answer:
            snapshot = json.load(answer)
    assert [(f["msg_id"], f["status"]) for f in snapshot["failures"]] == [
        (ar.msg_ids[0], "failed")], snapshot["failures"]
    assert "ZeroDivisionError" in snapshot["failures"][0]["error"]
