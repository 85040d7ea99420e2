"""Every example of docs/multiengine.md runs as shown, on a real 4-engine cluster.

The guide's sessions are fenced ``ipython`` blocks: ``In [n]: code`` lines,
``...:`` continuation lines, then the output shown.  They run in order, in
one IPython shell (so the magics work as for a user), with the shell's
prompt number set to the guide's; what each cell prints (stdout, stderr,
the ``Out[n]:`` display, tracebacks) must be what the guide shows, line by
line, trailing spaces aside.  ``...`` in the guide's output stands for any
text (random numbers, timings, the frames of a traceback).

Fenced ``python`` blocks are complete programs (the Twisted example): each
runs in its own process, and the ``output`` block after it, if any, is what
it must print.  ``console`` blocks (shell commands) are not run: the
cluster is started by the ``cluster4`` fixture with ``ipcluster start -n 4``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from support import ROOT

pytest.importorskip("IPython")



GUIDE = ROOT / "docs" / "multiengine.md"
_IN = re.compile(r"In \[(\d+)\]: ?(.*)")
_MORE = re.compile(r"\s+\.\.\.: ?(.*)")


@dataclass
class Cell:
    """One ``In [n]:`` input of a session and the output shown after it."""

    line: int
    number: int
    code: str
    expected: str


@dataclass
class Program:
    """A fenced ``python`` block and the ``output`` block after it (or None)."""

    line: int
    code: str
    expected: str | None


def _fences(text: str) -> list[tuple[int, str, list[str]]]:
    """``(line number, info string, lines)`` of each fenced block."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            info, start, body = lines[i][3:].strip(), i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((start, info, body))
        i += 1
    return blocks


def _session(start: int, body: list[str]) -> list[Cell]:
    cells: list[Cell] = []
    i = 0
    while i < len(body):
        match = _IN.fullmatch(body[i])
        if match is None:
            if body[i].strip():
                raise AssertionError(f"{GUIDE.name}:{start + i + 1}: text before any In [n]:")
            i += 1
            continue
        line, code = start + i + 1, [match.group(2)]
        i += 1
        while i < len(body) and (more := _MORE.fullmatch(body[i])):
            code.append(more.group(1))
            i += 1
        shown = []
        while i < len(body) and not _IN.fullmatch(body[i]):
            shown.append(body[i])
            i += 1
        cells.append(Cell(line, int(match.group(1)), "\n".join(code) + "\n", "\n".join(shown)))
    return cells


def examples(text: str) -> list[Cell | Program]:
    """The sessions' cells and the programs of the guide, in order."""
    out: list[Cell | Program] = []
    blocks = _fences(text)
    for k, (start, info, body) in enumerate(blocks):
        if info == "ipython":
            out += _session(start, body)
        elif info == "python":
            follows = blocks[k + 1] if k + 1 < len(blocks) else None
            expected = "\n".join(follows[2]) if follows and follows[1] == "output" else None
            out.append(Program(start, "\n".join(body) + "\n", expected))
    return out


def _normal(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def shows(expected: str, actual: str) -> bool:
    """Whether ``actual`` output is what ``expected`` shows.

    ``...`` alone on a line stands for any number of lines; elsewhere, for
    any text within the line.
    """
    parts = []
    for line in _normal(expected).split("\n"):
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            inline = "[^\n]*?".join(re.escape(part) for part in line.split("..."))
            parts.append(inline + r"\n")
    return re.fullmatch("".join(parts), _normal(actual) + "\n") is not None


@pytest.fixture
def shell(ipython_shell):
    """A fresh IPython shell (see conftest)."""
    return ipython_shell


def test_parser_reads_sessions_and_programs():
    text = (
        "Intro\n```ipython\nIn [1]: for i in range(2):\n   ...:     print(i)\n   ...:\n0\n1\n\n"
        "In [2]: x = 1\n```\n```console\n$ ls\n```\n```python\nprint('hi')\n```\n"
        "```output\nhi\n```\n"
    )
    cell1, cell2, program = examples(text)
    assert (cell1.number, cell1.code, _normal(cell1.expected)) == (
        1, "for i in range(2):\n    print(i)\n\n", "0\n1",
    )
    assert (cell2.code, cell2.expected) == ("x = 1\n", "")
    assert (program.code, program.expected) == ("print('hi')\n", "hi")
    assert shows("Out[3]: [...]\n", "Out[3]: [1, 2]   \n\n")
    assert not shows("Out[3]: [1]", "Out[3]: [2]")
    assert shows("a\n...\nz", "a\nb\nc\nz") and shows("a\n...\nz", "a\nz")
    assert not shows("a ... z", "a b\nz")


def test_every_example_of_the_guide_runs_as_shown(cluster4, shell, capsys, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(cluster4.plait_dir))
    capsys.readouterr()
    found = examples(GUIDE.read_text())
    assert sum(isinstance(e, Cell) for e in found) > 100
    mismatches = []
    for example in found:
        if isinstance(example, Cell):
            shell.execution_count = example.number
            shell.run_cell(example.code, store_history=True)
            captured = capsys.readouterr()
            actual = captured.out + captured.err
        else:
            done = subprocess.run(
                [sys.executable, "-c", example.code], capture_output=True, text=True,
                timeout=120, env={**cluster4.env},
            )
            actual = done.stdout if done.returncode == 0 else done.stdout + done.stderr
            if example.expected is None:
                if done.returncode == 0:
                    continue
                actual, example.expected = done.stderr, "(the program exits with status 0)"
        if not shows(example.expected, actual):
            mismatches.append(
                f"{GUIDE.name}:{example.line}: {example.code.strip()!r}\n"
                f"--- the guide shows:\n{_normal(example.expected)}\n"
                f"--- but it printed:\n{_normal(actual)}"
            )
    assert not mismatches, "\n\n".join(mismatches)


REFERENCE_EXAMPLES = [
    "mec = client.MultiEngineClient()", "mec.get_ids()",
    "mec.map(lambda x:x**10, range(32))", "@mec.parallel()",
    "mec.execute('a=5')", "mec.execute('c=a+b',targets=[0,2])", "mec.execute('print(c)')",
    "for r in result_dict:", "pr = mec.execute('time.sleep(", "pr.get_result(block=False)",
    "pr.r", "mec.barrier(pr_list)", "mec.targets = [0,2]", "mec.targets = 'all'",
    "mec.activate()", "%px import numpy", "%result", "%autopx", "px print(",
    "mec.push(dict(a=1.03234,b=3453))", "mec.pull('b',targets=0)", "mec.pull(('a','b'))",
    "mec.zip_pull(('a','b'))", "mec.push_function(dict(f=f))", "mec['a']=['foo','bar']",
    "mec.scatter('a',range(16))", "mec.gather('a')", "mec.scatter('x',range(64))",
    "px y = [i**10 for i in x]", "mec.execute('1/0')", "e.raise_exception()",
    "e.print_tracebacks()",
]


def test_the_guide_has_every_example_of_the_reference():
    text = GUIDE.read_text()
    missing = [snippet for snippet in REFERENCE_EXAMPLES if snippet not in text]
    assert not missing, f"the guide lacks these examples of the reference: {missing}"
