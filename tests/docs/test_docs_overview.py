"""The examples of docs/overview.md, run against a real 4-engine cluster."""

from __future__ import annotations

import re

from support import ROOT

DOC = ROOT / "docs" / "overview.md"


def _session(text: str) -> list[tuple[str, str]]:
    """``(statement, expected output)`` pairs of the ``>>>`` blocks."""
    pairs: list[tuple[str, str]] = []
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        if ">>>" not in block:
            continue
        statement, output = None, []
        for line in block.splitlines():
            if line.startswith(">>> "):
                if statement is not None:
                    pairs.append((statement, "\n".join(output).strip()))
                statement, output = line[4:], []
            else:
                output.append(line)
        if statement is not None:
            pairs.append((statement, "\n".join(output).strip()))
    return pairs


def test_next_steps_session_runs_as_written(cluster4, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(cluster4.plait_dir))
    session = _session(DOC.read_text())
    assert session, "no examples found"
    namespace: dict = {}
    for statement, expected in session:
        try:
            value = eval(statement, namespace)
        except SyntaxError:
            exec(statement, namespace)
            value = None
        shown = "" if value is None else repr(value)
        assert shown == expected, statement
