"""The demos of examples/ run as a user runs them, at a small size, each on a local
cluster of its own in a fresh PLAIT_DIR: what they print, the PNG figures they
write, and nothing left running."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import ROOT
from support.cluster import left_running, make_env

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def run_example(name: str, tmp_path, *args: str) -> list[str]:
    folder = tmp_path / "plait"
    out = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args,
                          f"--out={tmp_path / 'figures'}"], env=make_env(folder),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert left_running(folder) == []  # the example stopped its cluster
    return out.stdout.splitlines()


def figures(tmp_path, *names: str) -> None:
    for name in names:
        data = (tmp_path / "figures" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name


def test_pi_digits(tmp_path):
    lines = run_example("pi_digits.py", tmp_path, "-n", "2", "--digits", "20000")
    assert lines[0].startswith("20,000 digits of pi in ") and lines[0].endswith(": 3141592653...")
    # the first 10,000 digits (the 3 included): the reference's counts
    assert lines[1] == ("single digit counts, first 10,000 digits: "
                        "[968, 1026, 1021, 975, 1012, 1046, 1021, 970, 947, 1014]")
    assert lines[-1] == "the engines' counts match a serial count here"
    figures(tmp_path, "single_digits.png", "two_digit_counts.png")


def test_asian_options(tmp_path):
    lines = run_example("asian_options.py", tmp_path, "-n", "2", "--grid", "4",
                        "--paths", "2000")
    assert lines[0] == "16 prices (a 4 x 4 grid), 2,000 paths each"
    assert lines[1].split() == ["engines", "seconds", "speedup"]
    assert lines[2].split()[0] == "1" and lines[3].split()[0] == "2"
    assert float(lines[3].split()[2]) > 0
    figures(tmp_path, "asian_call.png", "asian_put.png")


def test_dag_dependencies(tmp_path):
    lines = run_example("dag_dependencies.py", tmp_path, "-n", "2", "--nodes", "12")
    assert lines[0].startswith("12 tasks, 24 dependencies, longest path ")
    assert lines[1] == "no task started before its parents had completed"
    figures(tmp_path, "dag.png", "dag_timeline.png")


def test_task_farm(tmp_path):
    lines = run_example("task_farm.py", tmp_path, "-n", "2", "--tasks", "6")
    assert lines == [
        "6 big-memory tasks wait: no engine has 64 GiB",
        "plain: 6 tasks, on engines [0, 1]",
        "gpu: 6 tasks, on engines [0]",
        "big memory: 6 tasks, on engines [1]",
        f"wrote {tmp_path / 'figures' / 'task_farm.png'}",
    ]
    figures(tmp_path, "task_farm.png")
