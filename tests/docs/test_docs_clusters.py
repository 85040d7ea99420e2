"""docs/clusters.md runs as written: each ``python`` block is a program run in
its own process, in a fresh ``PLAIT_DIR``, and must print what the ``output``
block after it shows (``console`` blocks are not run).  The runner is
``support.docs``, which every guide's test shares."""

from __future__ import annotations

from support import ROOT
from support.cluster import make_env
from support.docs import Program, examples, missing_snippets, run_examples

GUIDE = ROOT / "docs" / "clusters.md"


def test_every_program_of_the_guide_runs_as_shown(tmp_path, capsys):
    found = examples(GUIDE.read_text(), GUIDE.name)
    programs = [example for example in found if isinstance(example, Program)]
    assert len(programs) >= 6
    mismatches = run_examples(programs, None, capsys, make_env(tmp_path / "p"))
    assert not mismatches, "\n\n".join(m.report(GUIDE.name) for m in mismatches)


def test_the_guide_documents_every_cluster_toml_key():
    from plait.cluster.config import SECTIONS

    keys = [f"[{section}] {key}" for section, specs in SECTIONS.items() for key in specs]
    assert len(keys) >= 29
    assert not missing_snippets(GUIDE, [f"`{key}`" for key in keys])
