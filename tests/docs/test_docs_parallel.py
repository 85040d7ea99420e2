"""docs/parallel.md runs as written, on real clusters.

The guide's ``ipython`` blocks are one IPython session, its ``python``
blocks programs with the ``output`` they print (see ``support.docs``, the
runner every guide's test shares).  ``console`` blocks are not run; the
clusters they start come from fixtures, all in one PLAIT_DIR so that the
guide's ``Client(profile=...)`` finds them:

* ``ipcluster start -n 4``: the ``cluster4`` fixture (a fresh cluster for
  this module);
* ``ipcluster start -n 2 --profile=mpi``, and
  ``ipcluster start -n 4 --profile=lru --scheme=lru --hwm=0``: started here,
  next to it.

Some examples show what plait.parallel should print but does not yet: each
is listed in :data:`KNOWN_GAPS` with the reason.  Their mismatches do not
fail the test (they are reported as a warning), but one that starts to
match does, so that its entry is removed once the gap is closed.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterator

import pytest

from support import ROOT
from support.cluster import Cluster
from support.docs import Cell, examples, missing_snippets, run_examples

pytest.importorskip("IPython")

GUIDE = ROOT / "docs" / "parallel.md"

#: The other clusters of the guide: (profile, engines, ipcluster options).
PROFILES = [("mpi", 2, []), ("lru", 4, ["--scheme=lru", "--hwm=0"])]

#: Examples whose output plait.parallel does not give yet: a snippet of the
#: cell's code, and why.
KNOWN_GAPS: dict[str, str] = {}


@pytest.fixture(scope="module")
def clusters(cluster4: Cluster) -> Iterator[Cluster]:
    """``cluster4``, with the guide's other profiles' clusters started in its PLAIT_DIR."""
    started = []
    try:
        for profile, n, extra in PROFILES:
            other = Cluster(cluster4.plait_dir, cluster4.env, n, profile=profile, extra=extra)
            started.append(other)
            other.start()
        yield cluster4
    finally:
        for other in started:
            other.stop()


@pytest.fixture
def shell(ipython_shell):
    """A fresh IPython shell (see conftest)."""
    return ipython_shell


def _gap(example: object) -> str | None:
    code = getattr(example, "code", "")
    return next((why for snippet, why in KNOWN_GAPS.items() if snippet in code), None)


@pytest.mark.timeout(600)
def test_every_example_of_the_guide_runs_as_shown(clusters, shell, capsys, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(clusters.plait_dir))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the guide adds '.' to it
    found = examples(GUIDE.read_text(), GUIDE.name)
    assert sum(isinstance(example, Cell) for example in found) > 150
    gapped = [example for example in found if _gap(example)]
    assert len(gapped) == len(KNOWN_GAPS), "each known gap names exactly one example"
    try:
        mismatches = run_examples(found, shell, capsys, clusters.env)
    finally:
        sys.modules.pop("helpers", None)  # the module the guide writes and imports
    failing = [m for m in mismatches if not _gap(m.example)]
    assert not failing, "\n\n".join(m.report(GUIDE.name) for m in failing)
    still = {id(m.example) for m in mismatches}
    closed = [example for example in gapped if id(example) not in still]
    assert not closed, "these known gaps are closed, remove them from KNOWN_GAPS: " + ", ".join(
        f"{GUIDE.name}:{example.line}" for example in closed)
    for m in mismatches:
        warnings.warn(f"known gap, {_gap(m.example)}:\n{m.report(GUIDE.name)}", stacklevel=1)


# The examples of the reference documents (parallel-task.rst, parallel-asyncresult.rst,
# fragments-000.rst groups 2 and 3), as the guide spells them.
REFERENCE_EXAMPLES = [
    # parallel-task.rst
    "from plait.parallel import Client", "rc = Client()", "Client(profile='mpi')",
    "lview = rc.load_balanced_view()", "lview.block = True",
    "serial_result = list(map(lambda x:x**10, range(32)))",
    "parallel_result = lview.map(lambda x:x**10, range(32))", "serial_result==parallel_result",
    "@lview.parallel()", "f.map(range(32))", "from plait.parallel import depend, require, dependent",
    "@require('numpy', 'sqlite3')", "def platform_specific(plat):", "@depend(platform_specific, 'darwin')",
    "@depend(platform_specific, 'nt')", "mactask = dependent(mytask, platform_specific, 'darwin')",
    "wintask = dependent(mytask, platform_specific, 'nt')", "t = dependent(f, g, *dargs, **dkwargs)",
    "with lview.temp_flags(after=[ar,ar2]):", "with lview.temp_flags(follow=[ar], timeout=2.5):",
    "Dependency(", "all=False", "failure=True", "retries", "rc.resubmit(",
    "--scheme=lru", "--hwm", "ordered=False",
    # parallel-asyncresult.rst
    "ar = rc[:].apply_async(os.getpid)", "pids = ar.get_dict()", "rc[:]['pid_map'] = pids",
    "ar.elapsed", "ar.progress", "1.0 * ar.progress / len(ar)", "ar.wait_interactive(",
    "ar.serial_time", "ar.wall_time", "speedup = ar.serial_time / ar.wall_time",
    "X = np.linspace(0,100)", "from math import sqrt", "add = lambda a,b: a+b",
    "sq = lambda x: x*x", "sqrt(reduce(add, map(sq, X)) / len(X))",
    "sqrt(reduce(add, view.map(sq, X)) / len(X))", "58.028845747399714", "msg_ids",
    # fragments-000.rst: Results, the Hub, the transition guide
    "ar.wait(", "ar.ready()", "ar.successful()", "ar.get(timeout=", "ar.r", "ar.abort()",
    "ar.metadata", "rc.get_result(", "AsyncHubResult", "rc.history", "rc.results",
    "rc.metadata", "rc.result_status(", "rc.purge_results(", "rc.hub_history()",
    "rc.db_query(", "'$lt'", "'$gt'", "'$in'", "rc.queue_status()",
    "pr = mec.pull('a', targets=[0,1], block=False)",
    "ar = dview.pull('a', targets=[0,1], block=False)",
    # asked of this guide beyond the reference
    "import plait.parallel as ipp", "mec = client.MultiEngineClient()", "rc[:].pull(",
    "ipcontroller-client.furl", "rc.ids", "rc[0]", "apply_sync", "apply_async", "map_sync",
    "map_async", "imap(", "push(", "pull(", "scatter(", "gather(", "execute(",
    "dview['a'] =", "ar.engine_id", "ar.stdout", "RemoteError", "CompositeError",
    "ImpossibleDependency", "DependencyTimeout", "Reference(", "@interactive",
]


def test_the_guide_has_every_example_of_the_reference():
    missing = missing_snippets(GUIDE, REFERENCE_EXAMPLES)
    assert not missing, f"{GUIDE.name} lacks these examples of the reference: {missing}"


def _anchors(markdown: str) -> set[str]:
    """The anchors of a page's headings, as GitHub makes them."""
    found = set()
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    for title in re.findall(r"^#+ (.+)$", prose, re.M):
        found.add(re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-"))
    return found


def test_the_guide_links_resolve():
    text = GUIDE.read_text()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    links = re.findall(r"\]\(([^)\s]+)\)", prose)
    assert links
    broken = []
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        page, _, anchor = link.partition("#")
        target = GUIDE.parent / page if page else GUIDE
        if not target.is_file() or (anchor and anchor not in _anchors(target.read_text())):
            broken.append(link)
    assert not broken, f"{GUIDE.name} links to what does not exist: {broken}"
