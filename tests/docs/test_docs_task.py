"""docs/task.md runs as written, on a real cluster of four engines.

The guide's ``ipython`` blocks are one IPython session: each ``In [n]:``
cell (with its ``...:`` continuation lines) runs in one shell, in order, and
what it prints (output, the ``Out[n]:`` display, a traceback) must match
the lines the guide shows after it.  In the guide's output, ``...`` alone on
a line stands for any number of lines and ``...`` within a line for any
text.  A ``python`` block is a program run in its own process; the
``output`` block after it is what it must print.  ``console`` blocks are
not run: the cluster comes from the ``cluster4`` fixture (a fresh
``ipcluster start -n 4`` for this module, so task ids start at 0 as in the
guide).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from support import ROOT

pytest.importorskip("IPython")


GUIDE = ROOT / "docs" / "task.md"
CELL = re.compile(r"In \[(\d+)\]: ?(.*)")
MORE = re.compile(r" +\.\.\.: ?(.*)")


def blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """``(first line number, info string, lines)`` of every fenced block."""
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("```"):
            info, start = lines[i][3:].strip(), i + 2
            end = i + 1
            while not lines[end].startswith("```"):
                end += 1
            found.append((start, info, lines[i + 1:end]))
            i = end
        i += 1
    return found


def cells(start: int, lines: list[str]) -> list[tuple[int, int, str, str]]:
    """``(line, prompt number, code, output shown)`` of a session block."""
    out, i = [], 0
    while i < len(lines):
        first = CELL.fullmatch(lines[i])
        if first is None:
            assert not lines[i].strip(), f"{GUIDE.name}:{start + i}: text outside a cell"
            i += 1
            continue
        line, code = start + i, [first.group(2)]
        i += 1
        while i < len(lines) and (more := MORE.fullmatch(lines[i])):
            code.append(more.group(1))
            i += 1
        shown = []
        while i < len(lines) and not CELL.fullmatch(lines[i]):
            shown.append(lines[i])
            i += 1
        out.append((line, int(first.group(1)), "\n".join(code) + "\n", "\n".join(shown)))
    return out


def tidy(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def matches(shown: str, printed: str) -> bool:
    """Whether ``printed`` is what the guide ``shown`` (with its ``...`` wildcards)."""
    pattern = ""
    for line in tidy(shown):
        if line == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += "[^\n]*?".join(map(re.escape, line.split("..."))) + r"\n"
    return re.fullmatch(pattern, "".join(f"{line}\n" for line in tidy(printed))) is not None


@pytest.fixture
def shell(ipython_shell):
    """A fresh IPython shell (see conftest)."""
    return ipython_shell


def test_the_matcher():
    assert matches("Out[3]: [...]", "Out[3]: [1, 2]  \n")
    assert matches("a\n...\nz", "a\nb\nc\nz") and matches("a\n...\nz", "a\nz")
    assert not matches("Out[3]: [1]", "Out[3]: [2]")
    assert not matches("a ... z", "a b\nz")
    [(line, number, code, shown)] = cells(1, ["In [4]: for i in range(2):", "   ...:     i",
                                               "   ...:", "", "Out: x"])
    assert (number, code, shown) == (4, "for i in range(2):\n    i\n\n", "\nOut: x")


def test_every_example_of_the_guide_runs_as_shown(cluster4, shell, capsys, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(cluster4.plait_dir))
    capsys.readouterr()
    found = blocks(GUIDE.read_text())
    mismatches, count = [], 0
    for k, (start, info, lines) in enumerate(found):
        if info == "ipython":
            for line, number, code, shown in cells(start, lines):
                count += 1
                shell.execution_count = number
                shell.run_cell(code, store_history=True)
                captured = capsys.readouterr()
                printed = captured.out + captured.err
                if not matches(shown, printed):
                    mismatches.append((line, code, shown, printed))
        elif info == "python":
            follows = found[k + 1] if k + 1 < len(found) else None
            shown = "\n".join(follows[2]) if follows and follows[1] == "output" else ""
            done = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True,
                                  text=True, timeout=120, env=dict(cluster4.env))
            printed = done.stdout + (done.stderr if done.returncode else "")
            if done.returncode or not matches(shown, printed):
                mismatches.append((start, "(program)", shown, printed))
    assert count > 70
    report = "\n\n".join(
        f"{GUIDE.name}:{line}: {code.strip()!r}\n--- the guide shows:\n{shown.strip()}\n"
        f"--- but it printed:\n{printed.strip()}"
        for line, code, shown, printed in mismatches
    )
    assert not mismatches, report


# The examples of the reference guide (kernel-task.rst), as the guide spells them.
REFERENCE_EXAMPLES = [
    "tc = client.TaskClient()", "client.TaskClient('/path/to/my/ipcontroller-tc.furl')",
    "tc.map(lambda x:x**10, range(32))", "serial_result==parallel_result", "@tc.parallel()",
    "f(range(32))", 'tasklist.append(client.Task("a = %i" % n, pull="a"))',
    "taskids = [tc.run(t) for t in tasklist]", "tc.barrier(taskids)",
    "task_results = [tc.get_task_result(taskid) for taskid in taskids]",
    "TaskResult[ID:73]:{'a': 73}", "tr.engineid", "tr.submitted, tr.completed, tr.duration",
    "tr.results['a']", "tr.ns.a", "tc.get_task_result(taskIDs[-1]) is None",
    "tc.barrier(taskIDs)", "results = [tc.get_task_result(tid) for tid in taskIDs]",
    "tc.queue_status()", "tc.queue_status(verbose=True)", "tc.abort(", "tc.spin()",
    'client.Task("a = str(id)")', 'client.Task("a = str(id)", pull = "a")',
    'pull = ["a", "id"]', 'client.Task("a = f(submitted)", push=dict(submitted=time.time()',
    'clear_after=True)', 'client.Task("a = sorted(globals())", pull = "a",clear_before=True)'
    .replace(",clear", ", clear"),
    'client.Task("os.kill(os.getpid(), 9)", retries=99)', "recovery_task=",
    'return properties["RAM"] > 2**32 # have at least 4GB',
    'client.Task("a = bigfunc()", pull="a", depend=dep)', "mec.set_properties(",
    "ipcluster start -n 4", "--scheme=lru",
]


def test_the_guide_has_every_example_of_the_reference():
    text = GUIDE.read_text()
    missing = [snippet for snippet in REFERENCE_EXAMPLES if snippet not in text]
    assert not missing, f"docs/task.md lacks these examples of the reference: {missing}"
    assert "TABLE" not in text.split("\n"), "the scheduler table is missing"
