"""Smoke test of the benchmark suite: ``benchmarks/run.py --quick --only foundation``.

It runs the suite against a real cluster and checks that it prints its table
with a number for every foundation figure and limit, writes the same figures
as JSON, leaves no process behind and runs no peer.  Timings are not checked:
they depend on the machine and its load.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from support import ROOT

RUN = ROOT / "benchmarks" / "run.py"

LABELS = [
    "loopback TCP round trip, Python, 1 hop",
    "TLS one hop, Python ssl, loopback",
    "execute('pass', targets=0) round trip",
    "push+pull 10 MB array, 1 engine",
    "ipcluster start -n 2 --daemonize until ready",
    "ipcluster stop (processes gone)",
]


def test_quick_foundation_prints_a_table_of_numbers(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--only", "foundation", "--rtt-count", "20",
         "--json", str(out)],
        capture_output=True, text=True, timeout=100, cwd=tmp_path,
    )
    report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, report
    lines = proc.stdout.splitlines()
    header = next((line for line in lines if line.startswith("section")), None)
    assert header is not None, report
    assert header.split()[:4] == ["section", "figure", "value", "unit"], report
    for label in LABELS:
        row = next((line for line in lines if label in line), None)
        assert row is not None, f"no row for {label!r}\n{report}"
        assert re.search(re.escape(label) + r"\s+\d+(\.\d+)?\s", row), f"no number in {row!r}"
    # No peer ran, and no process was left for the suite to kill.
    assert "peers" not in [line.split()[0] for line in lines if line.strip()], report
    assert "running peers" not in proc.stderr, report
    assert "killed" not in proc.stdout, report

    data = json.loads(out.read_text())
    rows = {f"{row['section']}.{row['key']}": row for row in data["rows"]}
    for key in ("limits.tcp_rtt", "limits.tls_bw", "foundation.rtt_one",
                "foundation.pushpull_10MB", "foundation.start", "foundation.stop"):
        assert isinstance(rows[key]["value"], float), rows[key]
        assert rows[key]["status"] == "", rows[key]
    assert data["sections"] == ["foundation"]
    assert data["peers"] == {}
