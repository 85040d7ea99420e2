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
The runner is ``support.docs``, which every guide's test shares.
"""

from __future__ import annotations

import pytest

from support import ROOT
from support.docs import Cell, examples, normal, run_examples, shows

pytest.importorskip("IPython")


GUIDE = ROOT / "docs" / "multiengine.md"


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
    assert (cell1.number, cell1.code, normal(cell1.expected)) == (
        1, "for i in range(2):\n    print(i)\n\n", "0\n1",
    )
    assert (cell2.code, cell2.expected) == ("x = 1\n", "")
    assert (program.code, program.expected) == ("print('hi')\n", "hi")
    assert shows("Out[3]: [...]\n", "Out[3]: [1, 2]   \n\n")
    assert not shows("Out[3]: [1]", "Out[3]: [2]")
    assert shows("a\n...\nz", "a\nb\nc\nz") and shows("a\n...\nz", "a\nz")
    assert not shows("a ... z", "a b\nz")
    assert shows("  2/2 done", "  0/2 done\r  1/2 done\r  2/2 done")


def test_every_example_of_the_guide_runs_as_shown(cluster4, shell, capsys, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(cluster4.plait_dir))
    found = examples(GUIDE.read_text(), GUIDE.name)
    assert sum(isinstance(example, Cell) for example in found) > 100
    mismatches = run_examples(found, shell, capsys, cluster4.env)
    assert not mismatches, "\n\n".join(m.report(GUIDE.name) for m in mismatches)


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
