"""A status page that cannot start once the controller has said it is ready (here
twisted.web's side of plait unimportable, as a broken installation would leave it)
costs nothing else: the controller serves its engines and clients, its log says
why, the URL is withdrawn from the security folder and from clients, and its port
refuses at once rather than leaving a browser waiting."""

from __future__ import annotations

import json
import socket
import time

from tests.support.cluster import Cluster, make_env

BROKEN_WEB = (
    "import sys\n"
    "sys.modules['plait.adapters.web'] = None  # a broken installation of the page\n"
)


def _until(test, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_status_page_that_cannot_start_is_withdrawn_and_costs_nothing_else(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BROKEN_WEB)
    d = tmp_path / "plait"
    env = make_env(d)
    env["PYTHONPATH"] = str(site)
    c = Cluster(d, env, 2)
    try:
        c.start()
        profile = d / "profile_default"
        url_file = c.security / "ipcontroller-status.url"
        logs = lambda: " ".join(p.read_text() for p in (profile / "log").glob(  # noqa: E731
            "ipcontroller-*.log"))
        assert _until(lambda: "the status page could not start" in logs(), 30), logs()
        assert "plait.adapters.web" in logs() and "the controller runs without it" in logs()
        assert not url_file.exists()
        # the controller works on, and tells clients there is no page
        rc = c.rc()
        try:
            rc.wait_for_engines(2, timeout=30)
            assert rc[:].apply_sync(lambda: 6 * 7) == [42, 42]
            assert rc.dashboard_url is None
        finally:
            rc.close()
        # the port it had bound refuses at once
        status_port = json.loads((profile / "db" / "ports.json").read_text())["status"]
        probe = socket.socket()
        probe.settimeout(5)
        try:
            err = probe.connect_ex(("127.0.0.1", status_port))
        finally:
            probe.close()
        assert err != 0
    finally:
        c.stop()
