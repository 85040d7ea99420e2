"""``LoadBalancedView`` against a real 4-engine cluster: tasks, maps, retries,
aborts, resubmits, and functional and graph dependencies with the
impossibility analysis of the reference.

Tasks that must stay unfinished while the test looks wait on a
:class:`~support.cluster.Gate`; nothing waits on time.
"""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

import plait.parallel as ipp
from plait.parallel import Dependency, depend, dependent, error, require
from support.cluster import Gate

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def rc(cluster4):
    client = cluster4.rc()
    yield client
    client.close()


@pytest.fixture
def lview(rc):
    return rc.load_balanced_view()


def square(x):
    return x * x


def fail(message="planned"):
    raise ValueError(message)


def engine_pid():
    import os

    return os.getpid()


# -- apply and map --------------------------------------------------------------------------
def test_apply_gives_one_value(lview):
    assert lview.apply_sync(square, 7) == 49
    ar = lview.apply_async(square, 8)
    assert ar.get(timeout=30) == 64
    assert ar.engine_id in (0, 1, 2, 3)
    assert ar.metadata.status == "ok"


def test_many_tasks_spread_over_the_engines(rc, lview):
    ars = [lview.apply_async(engine_pid) for _ in range(40)]
    assert rc.wait(ars, timeout=60)
    assert len({ar.engine_id for ar in ars}) > 1


def test_map_as_the_builtin_map(lview):
    assert lview.map_sync(lambda x: x ** 10, range(32)) == [x ** 10 for x in range(32)]
    assert lview.map_sync(lambda a, b: a - b, [5, 6, 7], [1, 1]) == [4, 5]
    lview.block = True
    assert lview.map(square, range(5)) == [0, 1, 4, 9, 16]
    assert lview.map(square, []) == []


def test_map_chunksize_makes_that_many_tasks(lview):
    ar = lview.map_async(square, range(10), chunksize=3)
    assert len(ar) == 4
    assert ar.get() == [x * x for x in range(10)]
    with pytest.raises(ValueError, match="chunksize"):
        lview.map_async(square, range(3), chunksize=0)


def test_map_unordered_gives_every_value_in_completion_order(lview):
    values = list(lview.imap(square, range(50), ordered=False, chunksize=5))
    assert sorted(values) == [x * x for x in range(50)]


def test_map_results_iterate_while_they_arrive(lview, tmp_path):
    gate = Gate(tmp_path)
    waiter = gate.waiter()

    def slow_last(x):
        if x == 3:
            waiter()
        return x

    ar = lview.map_async(slow_last, range(4), chunksize=1)
    it = iter(ar)
    assert [next(it), next(it), next(it)] == [0, 1, 2]
    assert not ar.ready()
    gate.open()
    assert next(it) == 3
    assert ar.ready()


def test_map_error_in_one_chunk(lview):
    def picky(x):
        if x == 5:
            raise KeyError(x)
        return x

    with pytest.raises(error.CompositeError, match="KeyError"):
        lview.map_sync(picky, range(10), chunksize=2)
    ar = lview.map_async(picky, range(10), chunksize=2)
    values = ar.get(return_exceptions=True)
    assert values[:4] == [0, 1, 2, 3]
    assert isinstance(values[4], error.RemoteError)


def test_map_bad_input(lview):
    with pytest.raises(TypeError, match="callable"):
        lview.map(None, range(3))
    with pytest.raises(TypeError, match="no options"):
        lview.map(square, range(3), colour="red")


def test_parallel_decorator_map(lview):
    @lview.parallel()
    def f(x):
        return 10.0 * x ** 4

    assert f.map(range(32)).get() == [10.0 * x ** 4 for x in range(32)]


def test_targets_restrict_the_engines(rc):
    view = rc.load_balanced_view(targets=[1, 2])
    ars = [view.apply_async(engine_pid) for _ in range(20)]
    rc.wait(ars)
    assert {ar.engine_id for ar in ars} <= {1, 2}


def test_apply_of_a_non_callable_and_unpicklable_args(lview):
    import threading

    with pytest.raises(TypeError, match="callable"):
        lview.apply("not a function")
    with pytest.raises(error.SerializationError):
        lview.apply_async(square, threading.Lock())
    assert lview.apply_sync(square, 3) == 9


# -- AsyncResult while tasks run --------------------------------------------------------------
def test_pending_result(lview, tmp_path):
    gate = Gate(tmp_path)
    ar = lview.apply_async(gate.waiter())
    assert not ar.ready()
    assert ar.wait(0) is False
    with pytest.raises(error.TimeoutError):
        ar.get(0)
    with pytest.raises(AssertionError):
        ar.successful()
    assert ar.progress == 0
    assert ar.elapsed >= 0
    gate.open()
    assert ar.get() == "go"
    assert ar.wait() is True
    assert ar.successful()


def test_abort_a_task_that_has_not_run(rc, tmp_path):
    gate = Gate(tmp_path)
    view = rc.load_balanced_view(targets=[3])
    blocker = view.apply_async(gate.waiter())
    waiting = view.apply_async(square, 4)
    waiting.abort()
    gate.open()
    assert blocker.get() == "go"
    with pytest.raises(error.TaskAborted):
        waiting.get()
    assert not waiting.successful()


# -- retries and resubmit ---------------------------------------------------------------------
def test_retries_run_a_failing_task_again(lview, tmp_path):
    marker = str(tmp_path / "tried")

    def fails_first_time():
        import os

        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first try")
        return "second try"

    with lview.temp_flags(retries=1):
        assert lview.apply_sync(fails_first_time) == "second try"
    os.remove(marker)
    with pytest.raises(error.RemoteError, match="first try"):
        lview.apply_sync(fails_first_time)


def test_resubmit_finished_tasks(rc, lview, tmp_path):
    marker = tmp_path / "fixed"

    def works_once_fixed():
        import os

        if not os.path.exists(str(marker)):
            raise RuntimeError("not fixed yet")
        return "fixed"

    ar = lview.apply_async(works_once_fixed)
    with pytest.raises(error.RemoteError):
        ar.get()
    marker.write_text("")
    again = rc.resubmit(ar.msg_ids)
    assert again.get() == ["fixed"]
    assert again.msg_ids != ar.msg_ids


def test_resubmit_a_pending_task_is_refused(rc, lview, tmp_path):
    gate = Gate(tmp_path)
    ar = lview.apply_async(gate.waiter())
    try:
        with pytest.raises(Exception, match="pending|not finished"):
            rc.resubmit(ar.msg_ids)
    finally:
        gate.open()
    assert ar.get() == "go"


# -- functional dependencies ------------------------------------------------------------------
def test_require_a_module_every_engine_has(lview):
    @require("json", "os")
    @ipp.interactive  # sees the engine namespace, where require imports
    def dumps():
        return json.dumps([1])  # noqa: F821 (imported by require)

    assert lview.apply_sync(dumps) == "[1]"


def test_require_a_module_no_engine_has_is_impossible(rc, lview):
    @require("no_such_module_anywhere")
    def needs_it():
        return 1

    with pytest.raises(error.RemoteError) as info:
        lview.apply_sync(needs_it)
    assert info.value.ename == "ImpossibleDependency"
    assert lview.apply_sync(square, 2) == 4  # the engines are all still there


def platform_is(name):
    import sys

    return sys.platform == name


def test_depend_on_a_platform(lview):
    @depend(platform_is, sys.platform)
    def here():
        return "ran"

    @depend(platform_is, "no-such-platform")
    def nowhere():
        return "ran"

    assert lview.apply_sync(here) == "ran"
    with pytest.raises(error.RemoteError, match="ImpossibleDependency"):
        lview.apply_sync(nowhere)


def test_an_unmet_dependency_goes_to_another_engine_never_twice_to_one(rc, tmp_path):
    rc[:].scatter("my_id", rc.ids, flatten=True, block=True)

    @ipp.interactive
    def on_engine(wanted):
        return my_id == wanted  # noqa: F821

    lview = rc.load_balanced_view()
    for wanted in (0, 1, 2, 3):
        ar = lview.apply_async(dependent(engine_pid, on_engine, wanted))
        ar.get()
        assert ar.engine_id == wanted


def test_raising_unmet_dependency_by_hand(rc):
    rc[:].scatter("my_id", rc.ids, flatten=True, block=True)

    @ipp.interactive
    def only_on_two():
        if my_id != 2:  # noqa: F821
            raise error.UnmetDependency()
        return my_id  # noqa: F821

    assert rc.load_balanced_view().apply_sync(only_on_two) == 2


# -- graph dependencies -----------------------------------------------------------------------
def test_after_waits_for_the_tasks_it_names(lview, tmp_path):
    gate = Gate(tmp_path)
    first = lview.apply_async(gate.waiter())
    with lview.temp_flags(after=[first]):
        second = lview.apply_async(square, 5)
    assert second.wait(0) is False
    assert second.metadata.after == first.msg_ids
    gate.open()
    assert second.get() == 25
    assert second.started >= first.completed


def test_after_a_failure_with_success_only_is_impossible(lview):
    failed = lview.apply_async(fail)
    with pytest.raises(error.RemoteError):
        failed.get()
    with lview.temp_flags(after=failed):
        ar = lview.apply_async(square, 2)
    with pytest.raises(error.RemoteError) as info:
        ar.get()
    assert info.value.ename == "ImpossibleDependency"


def test_cleanup_task_runs_only_after_a_failure(lview):
    failed = lview.apply_async(fail)
    ok = lview.apply_async(square, 1)
    on_failure = Dependency([failed], success=False, failure=True)
    with lview.temp_flags(after=on_failure):
        cleanup = lview.apply_async(lambda: "cleaned")
    assert cleanup.get() == "cleaned"
    with lview.temp_flags(after=Dependency([ok], success=False, failure=True)):
        never = lview.apply_async(lambda: "cleaned")
    with pytest.raises(error.RemoteError, match="ImpossibleDependency"):
        never.get()


def test_any_dependency_met_by_one_success(lview):
    failed = lview.apply_async(fail)
    ok = lview.apply_async(square, 3)
    with lview.temp_flags(after=Dependency([failed, ok], all=False)):
        assert lview.apply_sync(square, 4) == 16


def test_all_failed_with_any_is_impossible(lview):
    a = lview.apply_async(fail)
    b = lview.apply_async(fail)
    with lview.temp_flags(after=Dependency([a, b], all=False)):
        ar = lview.apply_async(square, 4)
    with pytest.raises(error.RemoteError, match="ImpossibleDependency"):
        ar.get()


def test_success_and_failure_both_count(lview):
    failed = lview.apply_async(fail)
    with lview.temp_flags(after=Dependency([failed], success=True, failure=True)):
        assert lview.apply_sync(square, 6) == 36


def test_depending_on_a_task_that_does_not_exist(rc, lview):
    with lview.temp_flags(after=[rc._msg_id(987654321)]):
        ar = lview.apply_async(square, 2)
    with pytest.raises(error.RemoteError) as info:
        ar.get()
    assert info.value.ename == "InvalidDependency"  # an ImpossibleDependency
    assert "do not exist" in info.value.evalue
    assert isinstance(info.value.failure.exception(), error.ImpossibleDependency)


def test_a_dependency_that_is_not_a_msg_id(rc, lview):
    with pytest.raises(error.InvalidDependency, match="not the msg_id"):
        with lview.temp_flags(after=["not-a-msg-id"]):
            lview.apply_async(square, 2)
    tc_task_id = 3  # the kernel generation's TaskClient hands out ints
    with pytest.raises(TypeError, match="msg_id, an AsyncResult or a Dependency"):
        with lview.temp_flags(after=[tc_task_id]):
            lview.apply_async(square, 2)
    assert lview.apply_sync(square, 2) == 4


def test_follow_runs_where_the_task_ran(lview):
    first = lview.apply_async(engine_pid)
    first.get()
    with lview.temp_flags(follow=first):
        followers = [lview.apply_async(engine_pid) for _ in range(8)]
    assert {ar.get() for ar in followers} == {first.get()}
    assert {ar.engine_id for ar in followers} == {first.engine_id}


def test_follow_tasks_of_several_engines_with_all_is_impossible(rc):
    a = rc[0].apply_async(engine_pid)
    b = rc[1].apply_async(engine_pid)
    rc.wait([a, b])
    lview = rc.load_balanced_view()
    with lview.temp_flags(follow=[a, b]):
        ar = lview.apply_async(engine_pid)
    with pytest.raises(error.RemoteError, match="ImpossibleDependency"):
        ar.get()
    with lview.temp_flags(follow=Dependency([a, b], all=False)):
        assert lview.apply_async(engine_pid).get() in (a.get(), b.get())


def test_dependency_timeout(lview, tmp_path):
    gate = Gate(tmp_path)
    blocker = lview.apply_async(gate.waiter())
    try:
        with lview.temp_flags(after=[blocker], timeout=0.2):
            ar = lview.apply_async(square, 2)
        with pytest.raises(error.RemoteError) as info:
            ar.get()
        assert info.value.ename == "DependencyTimeout"
    finally:
        gate.open()
    assert blocker.get() == "go"


def test_after_and_follow_together(lview):
    first = lview.apply_async(engine_pid)
    with lview.temp_flags(after=first, follow=first):
        second = lview.apply_async(engine_pid)
    assert second.get() == first.get()


def test_a_chain_of_dependencies(lview):
    previous = lview.apply_async(lambda: 1)
    for _ in range(50):
        with lview.temp_flags(after=previous):
            previous = lview.apply_async(lambda: 1)
    assert previous.get() == 1


def test_direct_and_balanced_tasks_depend_on_each_other(rc, lview):
    direct = rc[2].apply_async(engine_pid)
    with lview.temp_flags(follow=direct):
        assert lview.apply_sync(engine_pid) == direct.get()


def test_imap_reads_endless_input_lazily(lview):
    import itertools

    it = lview.imap(abs, itertools.count(-3))
    assert [next(it) for _ in range(6)] == [3, 2, 1, 0, 1, 2]


def test_imap_keeps_at_most_max_outstanding_tasks(rc, lview):
    seen = []

    def numbers():
        for i in range(10):
            seen.append((i, len(lview.outstanding)))
            yield i

    assert list(lview.imap(square, numbers(), max_outstanding=2)) == [i * i for i in range(10)]
    assert max(n for _, n in seen) <= 2


def test_imap_unordered_and_errors(lview):
    assert sorted(lview.imap(square, range(12), ordered=False)) == [i * i for i in range(12)]

    def picky(x):
        if x == 2:
            raise KeyError(x)
        return x

    it = lview.imap(picky, range(5))
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(error.RemoteError, match="KeyError"):
        next(it)
    with pytest.raises(ValueError, match="max_outstanding"):
        lview.imap(abs, range(3), max_outstanding=0)
