"""docs/reliability.md runs as written: each ``python`` block is a program run in
its own process, in a fresh ``PLAIT_DIR``, and must print what the ``output``
block after it shows (see ``support.docs``)."""

from __future__ import annotations

from support import ROOT
from support.docs import check_programs

GUIDE = ROOT / "docs" / "reliability.md"


def test_every_program_of_the_guide_runs_as_shown(tmp_path, capsys):
    check_programs(GUIDE, tmp_path, capsys, at_least=4)
