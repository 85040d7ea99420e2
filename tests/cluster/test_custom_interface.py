"""A new interface is one adapter and one Publication, plugged in at start."""

from __future__ import annotations

import os
import stat

import pytest

from plait.security import client_tub
from support import TESTS, in_reactor
from support.cluster import Cluster, make_env, wait_for_engines

PLUGINS = str(TESTS / "plugins")


def test_custom_interface_is_published_beside_the_others(tmp_path):
    env = make_env(tmp_path / "p")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PLUGINS, env.get("PYTHONPATH")]))
    c = Cluster(tmp_path / "p", env, 2)
    # ipcluster has no --adapter; start the controller by hand with it
    import subprocess
    import sys

    ctl = subprocess.Popen(
        [sys.executable, "-m", "plait.scripts.ipcontroller", "--adapter=engine_census:CENSUS"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    engines = []
    try:
        assert "ready" in ctl.stdout.readline()
        census_file = c.security / "ipcontroller-census.furl"
        assert stat.S_IMODE(census_file.stat().st_mode) == 0o600
        engines = [
            subprocess.Popen([sys.executable, "-m", "plait.scripts.ipengine"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(2)
        ]
        mec = c.mec()

        assert wait_for_engines(mec, 2) == [0, 1]
        census = in_reactor(client_tub().getReference, census_file.read_text().strip())
        assert in_reactor(census.callRemote, "count") == 2
        uuids = in_reactor(census.callRemote, "uuids")
        assert sorted(uuids) == [0, 1] and all(len(u) == 36 for u in uuids.values())
        # the census capability grants nothing else
        with pytest.raises(Exception, match="execute"):
            in_reactor(census.callRemote, "execute", "1", (True, []), True)
    finally:
        for p in [*engines, ctl]:
            p.kill()
            p.wait()


@pytest.mark.parametrize("spec, message", [
    ("engine_census:NOT_A_PUBLICATION", "not a plait Publication"),
    ("engine_census", "module:NAME"),
    ("no_such_module_xyz:X", "No module named"),
])
def test_bad_adapter_spec_is_a_clear_error(tmp_path, spec, message):
    env = make_env(tmp_path / "p")
    env["PYTHONPATH"] = PLUGINS
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "plait.scripts.ipcontroller", f"--adapter={spec}"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode != 0 and message in out.stderr

