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
guide).  The runner is ``support.docs``, which every guide's test shares.
"""

from __future__ import annotations

import pytest

from support import ROOT
from support.docs import Cell, examples, run_examples, session, shows

pytest.importorskip("IPython")


GUIDE = ROOT / "docs" / "task.md"


@pytest.fixture
def shell(ipython_shell):
    """A fresh IPython shell (see conftest)."""
    return ipython_shell


def test_the_matcher():
    assert shows("Out[3]: [...]", "Out[3]: [1, 2]  \n")
    assert shows("a\n...\nz", "a\nb\nc\nz") and shows("a\n...\nz", "a\nz")
    assert not shows("Out[3]: [1]", "Out[3]: [2]")
    assert not shows("a ... z", "a b\nz")
    [cell] = session(1, ["In [4]: for i in range(2):", "   ...:     i", "   ...:", "", "Out: x"])
    assert (cell.number, cell.code, cell.expected) == (4, "for i in range(2):\n    i\n\n",
                                                       "\nOut: x")


def test_every_example_of_the_guide_runs_as_shown(cluster4, shell, capsys, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(cluster4.plait_dir))
    found = examples(GUIDE.read_text(), GUIDE.name)
    assert sum(isinstance(example, Cell) for example in found) > 70
    mismatches = run_examples(found, shell, capsys, cluster4.env)
    assert not mismatches, "\n\n".join(m.report(GUIDE.name) for m in mismatches)


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
