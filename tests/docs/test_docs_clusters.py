"""docs/clusters.md runs as written: each ``python`` block is a program run in
its own process, in a fresh ``PLAIT_DIR``, and must print what the ``output``
block after it shows (``console`` blocks are not run).  The runner is
``support.docs``, which every guide's test shares."""

from __future__ import annotations

from support import ROOT
from support.docs import check_programs, missing_snippets

GUIDE = ROOT / "docs" / "clusters.md"


def test_every_program_of_the_guide_runs_as_shown(tmp_path, capsys):
    check_programs(GUIDE, tmp_path, capsys, at_least=6)


def test_the_guide_documents_every_cluster_toml_key():
    from plait.cluster.config import SECTIONS

    keys = [f"[{section}] {key}" for section, specs in SECTIONS.items() for key in specs]
    assert len(keys) >= 29
    assert not missing_snippets(GUIDE, [f"`{key}`" for key in keys])
