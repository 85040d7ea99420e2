"""Task ids across controller runs: the profile's horizon (pure logic, on files)."""

from __future__ import annotations

from plait.kernel.controller.taskids import IdHorizon, TaskIds


def test_a_horizon_keeps_ids_from_repeating_across_runs(tmp_path):
    horizon = IdHorizon(tmp_path / "db" / "taskids")
    IdHorizon.STEP = 10  # (a small step, to cross it)
    try:
        first_run = TaskIds(0, horizon)
        got = [first_run.reserve(4, "a"), first_run.reserve(4, "a"), first_run.reserve(4, "a")]
        assert got == [0, 4, 8] and horizon.load() >= 12  # the mark moved before id 10
        second_run = TaskIds(0, horizon)  # a controller killed and started again
        assert second_run.reserve(1, "b") >= 12
        assert TaskIds(0, IdHorizon(tmp_path / "other")).reserve(1, "c") == 0
    finally:
        IdHorizon.STEP = 1 << 20


def test_an_unreadable_horizon_counts_as_none(tmp_path):
    (tmp_path / "taskids").write_text("not a number")
    assert IdHorizon(tmp_path / "taskids").load() == 0
