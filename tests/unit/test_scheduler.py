"""The task scheduler: engine loads, the high water mark and each scheme's choice."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from zope.interface.verify import verifyObject

from plait.interfaces.task import IScheduler
from plait.kernel.controller.scheduler import (
    DEFAULT_HWM,
    DEFAULT_SCHEME,
    IDLE_RESET,
    MAX_MARK,
    SCHEMES,
    START_MARK,
    TARGET_SECONDS,
    Scheduler,
    WaitingTasks,
    adaptive_mark,
    get_scheme,
    make_scheduler,
)


def make(scheme: str, n: int = 3, hwm: int = 0, seed: int = 0) -> Scheduler:
    scheduler = Scheduler(scheme, hwm=hwm, rng=random.Random(seed))
    for engine_id in range(n):
        scheduler.add_engine(engine_id)
    return scheduler


def test_provides_ischeduler():
    assert verifyObject(IScheduler, Scheduler())


def test_defaults():
    scheduler = Scheduler()
    assert (scheduler.name, scheduler.hwm) == (DEFAULT_SCHEME, DEFAULT_HWM) == ("leastload", None)


def test_every_documented_scheme_is_registered():
    assert set(SCHEMES) == {"fifo", "lru", "plainrandom", "twobin", "leastload", "weighted"}
    for name, scheme in SCHEMES.items():
        assert get_scheme(name) is scheme


def test_unknown_scheme_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        Scheduler("roundrobin")
    message = str(info.value)
    assert "roundrobin" in message
    for name in SCHEMES:
        assert name in message


@pytest.mark.parametrize("hwm", [-1, 1.5, "2", True])
def test_bad_hwm_is_refused(hwm):
    with pytest.raises(ValueError, match="hwm"):
        Scheduler("lru", hwm=hwm)


# -- the adaptive mark ---------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def adaptive(n: int = 2) -> tuple[Scheduler, FakeClock]:
    clock = FakeClock()
    scheduler = Scheduler("leastload", hwm=None, clock=clock)
    for engine_id in range(n):
        scheduler.add_engine(engine_id)
    return scheduler, clock


def test_adaptive_mark_holds_about_the_target_work():
    assert adaptive_mark(0.0) == MAX_MARK
    assert adaptive_mark(TARGET_SECONDS / 5) == 5
    assert adaptive_mark(TARGET_SECONDS) == 1
    assert adaptive_mark(10.0) == 1


def run_tasks(scheduler: Scheduler, engine_id: int, seconds: float, n: int) -> None:
    for _ in range(n):
        scheduler.assigned(engine_id)
        scheduler.finished(engine_id, seconds)


def test_unknown_run_time_starts_at_the_start_mark():
    scheduler, _ = adaptive()
    assert (scheduler.mark(0), scheduler.mark(1)) == (START_MARK, START_MARK)
    for _ in range(START_MARK):
        scheduler.assigned(0)
    assert scheduler.available() == {1}


def test_tiny_tasks_grow_the_mark_one_task_at_a_time():
    scheduler, _ = adaptive()
    run_tasks(scheduler, 0, 0.0, 1)
    assert scheduler.mark(0) == START_MARK + 1
    run_tasks(scheduler, 0, 0.0, 100)
    assert scheduler.mark(0) == MAX_MARK
    assert scheduler.mark(1) == START_MARK  # each engine has its own


def test_long_tasks_drop_the_mark_at_once():
    scheduler, _ = adaptive()
    run_tasks(scheduler, 0, 0.0, 100)
    run_tasks(scheduler, 0, 10 * TARGET_SECONDS, 1)
    assert scheduler.mark(0) < MAX_MARK
    run_tasks(scheduler, 0, 10 * TARGET_SECONDS, 10)
    assert scheduler.mark(0) == 1
    scheduler.assigned(0)
    assert 0 not in scheduler.available()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_a_run_time_that_is_no_duration_is_ignored(bad):
    """An engine's report of ``nan``, ``inf`` or a negative run time (a broken or
    hostile engine) changes neither the estimate nor the mark."""
    scheduler, _ = adaptive()
    run_tasks(scheduler, 0, 0.0, 100)
    before = scheduler.mark(0)
    run_tasks(scheduler, 0, bad, 5)
    assert scheduler.mark(0) == before == MAX_MARK
    run_tasks(scheduler, 0, 10 * TARGET_SECONDS, 10)  # (a real duration still counts)
    assert scheduler.mark(0) == 1


def test_a_pause_forgets_the_estimate():
    scheduler, clock = adaptive()
    run_tasks(scheduler, 0, 0.0, 100)
    clock.now += IDLE_RESET / 2
    scheduler.assigned(0)
    assert scheduler.mark(0) == MAX_MARK  # still busy with the same kind of work
    scheduler.finished(0, 0.0)
    clock.now += IDLE_RESET
    scheduler.assigned(0)
    assert scheduler.mark(0) == START_MARK


def test_a_new_engine_starts_cautiously_even_when_tasks_are_tiny():
    scheduler, _ = adaptive(1)
    run_tasks(scheduler, 0, 0.0, 100)
    scheduler.add_engine(1)
    assert scheduler.mark(1) == START_MARK
    scheduler, _ = adaptive(1)
    run_tasks(scheduler, 0, 1.0, 5)
    scheduler.add_engine(1)
    assert scheduler.mark(1) == 1


def test_fixed_hwm_ignores_run_times():
    scheduler = make("leastload", n=1, hwm=3)
    run_tasks(scheduler, 0, 0.0, 50)
    assert scheduler.mark(0) == 3
    run_tasks(scheduler, 0, 100.0, 50)
    assert scheduler.mark(0) == 3


# -- loads and the high water mark ---------------------------------------------------
def test_hwm_limits_outstanding_tasks():
    scheduler = make("leastload", n=2, hwm=2)
    assert scheduler.available() == {0, 1}
    scheduler.assigned(0)
    assert scheduler.available() == {0, 1}
    scheduler.assigned(0)
    assert scheduler.available() == {1}
    assert scheduler.load(0) == 2
    scheduler.finished(0)
    assert scheduler.available() == {0, 1}
    assert scheduler.load(0) == 1


def test_hwm_zero_means_unlimited():
    scheduler = make("leastload", n=1, hwm=0)
    for _ in range(1000):
        scheduler.assigned(0)
    assert scheduler.available() == {0}
    assert scheduler.load(0) == 1000


def test_engines_come_and_go():
    scheduler = make("lru", n=2, hwm=1)
    scheduler.assigned(1)
    scheduler.remove_engine(1)
    scheduler.remove_engine(7)  # unknown: ignored
    scheduler.finished(1)  # a late reply from a removed engine: ignored
    assert scheduler.available() == {0}
    assert scheduler.load(1) == 0
    scheduler.add_engine(2)
    scheduler.assigned(2)
    scheduler.add_engine(2)  # twice: no effect (its load stays)
    assert scheduler.load(2) == 1 and scheduler.available() == {0}


def test_choose_needs_a_candidate():
    with pytest.raises(ValueError):
        make("lru").choose([])


# -- the schemes -----------------------------------------------------------------------
def test_lru_is_round_robin():
    scheduler = make("lru", n=3)
    picks = []
    for _ in range(6):
        engine_id = scheduler.choose([0, 1, 2])
        scheduler.assigned(engine_id)
        picks.append(engine_id)
    assert picks == [0, 1, 2, 0, 1, 2]


def test_lru_ignores_completion_order():
    scheduler = make("lru", n=2)
    scheduler.assigned(0)
    scheduler.assigned(1)
    scheduler.finished(1)  # engine 1 is idle again, but 0 was assigned longer ago
    assert scheduler.choose([0, 1]) == 0


def test_fifo_prefers_the_engine_idle_longest():
    scheduler = make("fifo", n=3, hwm=1)
    for engine_id in (0, 1, 2):
        scheduler.assigned(engine_id)
    scheduler.finished(2)
    scheduler.finished(0)
    scheduler.finished(1)
    assert scheduler.choose([0, 1, 2]) == 2
    scheduler.assigned(2)
    assert scheduler.choose([0, 1]) == 0


def test_fifo_prefers_idle_engines_over_busy_ones():
    scheduler = make("fifo", n=2, hwm=0)
    scheduler.assigned(0)
    scheduler.assigned(1)
    scheduler.finished(1)
    scheduler.assigned(0)  # engine 0 now has 2, engine 1 none
    assert scheduler.choose([0, 1]) == 1
    scheduler.assigned(1)
    # both busy: the one whose last event is older goes first
    assert scheduler.choose([0, 1]) == 0


def test_leastload_picks_the_least_loaded():
    scheduler = make("leastload", n=3)
    for engine_id in (0, 0, 1, 2, 2):
        scheduler.assigned(engine_id)
    assert scheduler.choose([0, 1, 2]) == 1
    assert scheduler.choose([0, 2]) in (0, 2)


def test_leastload_breaks_ties_by_lru():
    scheduler = make("leastload", n=3)
    scheduler.assigned(1)
    scheduler.assigned(0)
    scheduler.assigned(2)
    for engine_id in (0, 1, 2):
        scheduler.finished(engine_id)
    assert scheduler.choose([0, 1, 2]) == 1  # equal loads: 1 was assigned first


def test_leastload_balances_a_stream_of_tasks():
    scheduler = make("leastload", n=4)
    for _ in range(40):
        scheduler.assigned(scheduler.choose(scheduler.available()))
    assert [scheduler.load(e) for e in range(4)] == [10, 10, 10, 10]


def test_plainrandom_reaches_every_candidate_and_only_them():
    scheduler = make("plainrandom", n=4)
    picks = Counter(scheduler.choose([1, 2, 3]) for _ in range(600))
    assert set(picks) == {1, 2, 3}
    assert min(picks.values()) > 120


def test_random_schemes_are_reproducible_with_a_seeded_rng():
    for name in ("plainrandom", "twobin", "weighted"):
        a, b = make(name, n=5, seed=42), make(name, n=5, seed=42)
        assert [a.choose(range(5)) for _ in range(50)] == [b.choose(range(5)) for _ in range(50)]


def test_twobin_takes_the_lru_of_two():
    scheduler = make("twobin", n=2)
    scheduler.assigned(1)  # engine 0 is now the least recently assigned
    assert {scheduler.choose([0, 1]) for _ in range(50)} == {0}


def test_twobin_never_picks_the_most_recent_of_many():
    scheduler = make("twobin", n=4)
    for engine_id in (0, 1, 2, 3):
        scheduler.assigned(engine_id)
    picks = Counter(scheduler.choose([0, 1, 2, 3]) for _ in range(400))
    assert 3 not in picks  # it always loses its pair
    assert picks[0] > picks[2]


def test_weighted_prefers_lightly_loaded_engines():
    scheduler = make("weighted", n=2)
    for _ in range(9):
        scheduler.assigned(0)
    picks = Counter(scheduler.choose([0, 1]) for _ in range(500))
    assert picks[1] > 450


def test_weighted_with_equal_loads_uses_lru():
    scheduler = make("weighted", n=2)
    scheduler.assigned(0)
    scheduler.finished(0)
    picks = Counter(scheduler.choose([0, 1]) for _ in range(200))
    assert picks[1] > picks[0]


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_single_candidate_is_always_chosen(name):
    scheduler = make(name, n=3)
    scheduler.assigned(2)
    assert scheduler.choose([2]) == 2
    assert scheduler.choose({1}) == 1


# -- the waiting tasks -------------------------------------------------------------------
def waiting(*props: dict) -> tuple[WaitingTasks, dict[int, dict]]:
    properties = dict(enumerate(props))
    tasks = WaitingTasks(properties.get)
    for engine_id in properties:
        tasks.engine_added(engine_id)
    return tasks, properties


def big(p):
    return p.get("big", False)


def test_waiting_tasks_come_out_oldest_first_across_groups():
    tasks, _ = waiting({"big": True}, {})
    tasks.add(0, None, None)
    tasks.add(1, b"big", big)
    tasks.add(2, None, None)
    assert len(tasks) == 3 and 1 in tasks
    assert tasks.pop_runnable({0, 1}) == (0, {0, 1})
    assert tasks.pop_runnable({0, 1}) == (1, {0})
    assert tasks.pop_runnable({1}) == (2, {1})
    assert tasks.pop_runnable({0, 1}) is None
    assert len(tasks) == 0


def test_a_blocked_old_task_does_not_hold_back_younger_ones():
    tasks, _ = waiting({"big": True}, {})
    tasks.add(0, b"big", big)
    tasks.add(1, None, None)
    assert tasks.pop_runnable({1}) == (1, {1})  # engine 0 is busy: task 0 is parked
    assert tasks.pop_runnable({1}) is None
    tasks.slot_freed(0)
    assert tasks.pop_runnable({0, 1}) == (0, {0})


def test_parked_group_wakes_on_eligibility_change():
    tasks, properties = waiting({}, {})
    tasks.add(0, b"big", big)
    assert tasks.pop_runnable({0, 1}) is None
    properties[1]["big"] = True
    tasks.refresh(1)
    assert tasks.pop_runnable({0, 1}) == (0, {1})


def test_parked_group_wakes_when_an_engine_joins():
    tasks, properties = waiting({})
    tasks.add(0, b"big", big)
    assert tasks.pop_runnable({0}) is None
    properties[1] = {"big": True}
    tasks.engine_added(1)
    assert tasks.pop_runnable({0, 1}) == (0, {1})


def test_removed_tasks_are_skipped():
    tasks, _ = waiting({})
    for taskid in range(4):
        tasks.add(taskid, None, None)
    tasks.remove(0)
    tasks.remove(2)
    assert [tasks.pop_runnable({0})[0] for _ in range(2)] == [1, 3]
    assert tasks.pop_runnable({0}) is None
    with pytest.raises(KeyError):
        tasks.remove(5)


def test_the_free_group_emptied_by_a_withdrawal_is_skipped_and_used_again():
    """(an unconstrained task aborted while every engine was busy: its group stays,
    empty, and a pass must neither fail on it nor lose the tasks that come next)"""
    tasks, _ = waiting({})
    tasks.add(0, None, None)
    assert tasks.pop_runnable(set()) is None  # every engine busy
    tasks.remove(0)  # aborted while it waited
    assert tasks.pop_runnable({0}) is None
    tasks.add(1, None, None)
    tasks.add(2, b"big", big)
    assert tasks.pop_runnable({0}) == (1, {0})
    assert tasks.pop_runnable({0}) is None and len(tasks) == 1


def test_avoided_engines_are_used_only_when_no_other_is_left():
    tasks, _ = waiting({}, {}, {})
    tasks.add(0, None, None, avoid=[0])
    tasks.add(1, None, None, avoid=[0, 1, 2])
    assert tasks.pop_runnable({0}) == (1, {0})  # 1 has nowhere else to go
    assert tasks.pop_runnable({0}) is None  # 0 waits for engine 1 or 2
    tasks.engine_removed(1)
    tasks.engine_removed(2)
    assert tasks.pop_runnable({0}) == (0, {0})


def test_unknown_engines_are_ignored():
    tasks, _ = waiting({})
    tasks.add(0, None, None)
    tasks.engine_removed(9)
    tasks.refresh(9)
    tasks.slot_freed(9)
    assert tasks.pop_runnable({0}) == (0, {0})


def test_an_older_retry_jumps_ahead_of_its_group():
    tasks, _ = waiting({})
    tasks.add(5, None, None)
    tasks.add(3, None, None)
    assert tasks.pop_runnable({0})[0] == 3


def test_depend_is_evaluated_once_per_engine_and_group():
    calls = []

    def counting(p):
        calls.append(p)
        return True

    tasks, _ = waiting({}, {})
    for taskid in range(100):
        tasks.add(taskid, b"counting", counting)
    assert len(calls) == 2
    while tasks.pop_runnable({0, 1}):
        pass
    assert len(calls) == 2
    tasks.refresh_all()
    assert len(calls) == 2  # no group left to evaluate


# -- schemes of your own ------------------------------------------------------------------
def test_a_scheme_function_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_schemes.py").write_text(
        "def highest(slots, rng):\n    return max(slots, key=lambda s: s.engine_id)\n"
        "NOT_A_SCHEME = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    scheduler = make_scheduler("my_schemes:highest", hwm=1)
    for engine_id in range(3):
        scheduler.add_engine(engine_id)
    assert scheduler.choose([0, 2, 1]) == 2
    assert scheduler.name == "my_schemes:highest"
    with pytest.raises(ValueError, match="not a scheme function"):
        Scheduler("my_schemes:NOT_A_SCHEME")
    with pytest.raises(ValueError, match="cannot load"):
        Scheduler("my_schemes:missing")
    with pytest.raises(ValueError, match="cannot load"):
        Scheduler("no_such_module_here:f")


class Priority(Scheduler):
    """An IScheduler of one's own: prefers engine 0 whenever it is free."""

    def __init__(self, hwm=None):
        super().__init__("leastload", hwm=1)

    def choose(self, candidates):
        return 0 if 0 in candidates else super().choose(candidates)


def test_an_ischeduler_class_by_module_path(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "priority_sched", sys.modules[__name__])
    scheduler = make_scheduler("priority_sched:Priority", hwm=5)
    assert isinstance(scheduler, Priority) and scheduler.hwm == 1
    scheduler.add_engine(1)
    scheduler.add_engine(0)
    assert scheduler.choose([1, 0]) == 0


def test_leastload_among_the_available_engines_is_the_linear_choice():
    """The heap of loads (O(log engines) a choice) picks what the scan over the
    candidates picks, whatever engines come, go, take and finish tasks."""
    rng = random.Random(7)
    sched = Scheduler("leastload", hwm=None, clock=lambda: 0.0)
    engines: list[int] = []
    for step in range(5000):
        action = rng.random()
        if action < 0.05 or not engines:
            engines.append(step)
            sched.add_engine(step)
        elif action < 0.07 and len(engines) > 1:
            sched.remove_engine(engines.pop(rng.randrange(len(engines))))
        elif action < 0.55 and sched.available():
            ready = sched.available()
            chosen = sched.choose(ready)
            linear = sched.choose(set(ready))  # (a copy: the scan)
            assert chosen == linear
            sched.assigned(chosen)
        else:
            sched.finished(rng.choice(engines), rng.choice([None, 0.0001, 0.01]))
    assert len(sched._by_load) <= 4 * len(engines) + 64
