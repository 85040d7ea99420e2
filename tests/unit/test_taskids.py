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


def test_message_ids_made_many_at_once_are_those_made_one_by_one():
    from plait.wire.records import msg_id, msg_id_maker, msg_ids, taskid_of

    prefix = 0x98162D2DBFA7CA91
    ids = [0, 1, 0xFFF, 0xFFFFFFFFFFFF, 1 << 48, (1 << 64) - 1]
    one = [msg_id(prefix, t) for t in ids]
    assert msg_ids(prefix, ids) == one == list(map(msg_id_maker(prefix), ids))
    assert msg_ids(prefix, ids[:4]) == one[:4]  # (the quick way: all below 2**48)
    assert [taskid_of(prefix, m) for m in one] == ids and msg_ids(prefix, []) == []


def test_db_query_records_are_plain_dicts_of_the_names_asked():
    from plait.parallel._client import _record_maker

    make = _record_maker(("msg_id", "engine_id", "it's"))
    assert list(map(make, ["a", "b"], [0, 1], [None, 2.5])) == [
        {"msg_id": "a", "engine_id": 0, "it's": None}, {"msg_id": "b", "engine_id": 1, "it's": 2.5}]
    assert _record_maker(("msg_id",))("x") == {"msg_id": "x"}
