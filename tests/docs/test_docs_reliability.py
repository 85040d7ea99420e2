"""docs/reliability.md runs as written: each ``python`` block is a program run in
its own process, in a fresh ``PLAIT_DIR``, and must print what the ``output``
block after it shows (see ``support.docs``)."""

from __future__ import annotations

from support import ROOT
from support.cluster import make_env
from support.docs import Program, examples, run_examples

GUIDE = ROOT / "docs" / "reliability.md"


def test_every_program_of_the_guide_runs_as_shown(tmp_path, capsys):
    found = examples(GUIDE.read_text(), GUIDE.name)
    programs = [example for example in found if isinstance(example, Program)]
    assert len(programs) >= 3
    mismatches = run_examples(programs, None, capsys, make_env(tmp_path / "p"))
    assert not mismatches, "\n\n".join(m.report(GUIDE.name) for m in mismatches)
