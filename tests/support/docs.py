"""Running the examples of a guide (``docs/*.md``) as they are written.

A guide's fenced blocks say what they are:

* ``ipython``: part of one IPython session that runs through the whole
  guide.  ``In [n]: code`` starts a cell, ``...:`` lines continue it, and
  the lines after it, up to the next cell, are what the cell prints (its
  output, the ``Out[n]:`` display, a traceback).  Every cell runs in one
  shell, in order, with the shell's prompt number set to the guide's.
* ``python``: a complete program, run in its own process; the ``output``
  block after it, if there is one, is what it must print (without one, it
  must only exit with status 0).
* anything else (``console``, ``output``...) is not run.

In the output a guide shows, ``...`` alone on a line stands for any number
of lines, and ``...`` within a line for any text on that line.  Trailing
spaces do not count, and neither do blank lines at either end.  A carriage
return rewrites its line, as on a terminal: only what follows the last one
of a line is what the user sees.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def fences(text: str) -> list[tuple[int, str, list[str]]]:
    """``(line number of the first line inside, info string, lines)`` of each
    fenced block."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            info, start, body = lines[i][3:].strip(), i + 2, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((start, info, body))
        i += 1
    return blocks


def session(start: int, body: list[str], name: str = "the guide") -> list[Cell]:
    """The cells of one ``ipython`` block whose first line is line ``start``."""
    cells: list[Cell] = []
    i = 0
    while i < len(body):
        match = _IN.fullmatch(body[i])
        if match is None:
            if body[i].strip():
                raise AssertionError(f"{name}:{start + i}: text outside an In [n]: cell")
            i += 1
            continue
        line, code = start + i, [match.group(2)]
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


def examples(text: str, name: str = "the guide") -> list[Cell | Program]:
    """The sessions' cells and the programs of a guide, in order."""
    out: list[Cell | Program] = []
    blocks = fences(text)
    for k, (start, info, body) in enumerate(blocks):
        if info == "ipython":
            out += session(start, body, name)
        elif info == "python":
            follows = blocks[k + 1] if k + 1 < len(blocks) else None
            expected = "\n".join(follows[2]) if follows and follows[1] == "output" else None
            out.append(Program(start, "\n".join(body) + "\n", expected))
    return out


def normal(text: str) -> str:
    """``text`` as compared: each line as a terminal leaves it (after its last
    carriage return), trailing spaces and blank lines at either end dropped."""
    lines = [line.rstrip("\r").rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def shows(expected: str, actual: str) -> bool:
    """Whether ``actual`` output is what ``expected`` shows (with its ``...``)."""
    parts = []
    for line in normal(expected).split("\n"):
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append("[^\n]*?".join(re.escape(part) for part in line.split("...")) + r"\n")
    return re.fullmatch("".join(parts), normal(actual) + "\n") is not None


@dataclass
class Mismatch:
    """An example whose output is not what the guide shows."""

    example: Cell | Program
    actual: str

    def report(self, name: str) -> str:
        code = self.example.code.strip() if isinstance(self.example, Cell) else "(program)"
        expected = self.example.expected
        return (f"{name}:{self.example.line}: {code!r}\n--- the guide shows:\n"
                f"{normal(expected) if expected is not None else '(exit status 0)'}\n"
                f"--- but it printed:\n{normal(self.actual)}")


def run_examples(found: list[Cell | Program], shell: Any, capsys: Any, env: Mapping[str, str],
                 before: Callable[[Cell | Program], None] | None = None,
                 timeout: float = 120) -> list[Mismatch]:
    """Run every example in order (cells in ``shell``, programs in a process
    with ``env``); the mismatches.  ``before(example)``, if given, is called
    before each one runs."""
    mismatches = []
    capsys.readouterr()
    for example in found:
        if before is not None:
            before(example)
        if isinstance(example, Cell):
            shell.execution_count = example.number
            shell.run_cell(example.code, store_history=True)
            captured = capsys.readouterr()
            actual = captured.out + captured.err
            if not shows(example.expected, actual):
                mismatches.append(Mismatch(example, actual))
            continue
        done = subprocess.run([sys.executable, "-c", example.code], capture_output=True,
                              text=True, timeout=timeout, env=dict(env))
        actual = done.stdout if done.returncode == 0 else done.stdout + done.stderr
        if done.returncode != 0 or (example.expected is not None
                                    and not shows(example.expected, actual)):
            mismatches.append(Mismatch(example, actual))
    return mismatches


def missing_snippets(guide: Path, snippets: list[str]) -> list[str]:
    """The ``snippets`` that the text of ``guide`` lacks."""
    text = guide.read_text()
    return [snippet for snippet in snippets if snippet not in text]


def check_programs(guide: Any, tmp_path: Any, capsys: Any, at_least: int) -> None:
    """Every ``python`` block of ``guide`` (a path) runs as a program of its own, in a
    fresh PLAIT_DIR under ``tmp_path``, and prints what its ``output`` block shows."""
    from support.cluster import make_env

    found = examples(guide.read_text(), guide.name)
    programs = [example for example in found if isinstance(example, Program)]
    assert len(programs) >= at_least
    mismatches = run_examples(programs, None, capsys, make_env(tmp_path / "p"))
    assert not mismatches, "\n\n".join(m.report(guide.name) for m in mismatches)
