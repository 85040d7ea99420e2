"""Graph dependencies (``after``/``follow``) as pure logic: the Graph and its verdicts.

The graph is driven as the task controller drives it: a status lookup that
says how each task stands (unknown, RUNNING, or ``(succeeded, engine)``),
``add`` for each new task and ``finished`` for each task that ends.  A few
tests at the end run the same through a TaskController over fake engines.
"""

from __future__ import annotations

import random
from collections import deque

from plait.kernel.controller import graph as graph_module
from plait.kernel.controller.graph import IMPOSSIBLE, INVALID, MET, RUNNING, WAITING, Graph
from plait.wire.task import GraphDependency, TaskSpec, encode_task
from support.fakes import TaskHarness, submit_one


class Item:
    """What the graph asks of a task: somewhere to hang its ``blocked``."""

    def __init__(self, name: str):
        self.name = name
        self.blocked = None

    def __repr__(self) -> str:
        return f"Item({self.name!r})"


class World:
    """Task statuses as the controller would report them, and a graph over them."""

    def __init__(self, running=(), succeeded=None, failed=None):
        self.status: dict[int, object] = {t: RUNNING for t in running}
        for t, engine in (succeeded or {}).items():
            self.status[t] = (True, engine)
        for t, engine in (failed or {}).items():
            self.status[t] = (False, engine)
        self.lookups = 0
        self.graph = Graph(self._lookup)

    def _lookup(self, taskid):
        self.lookups += 1
        return self.status.get(taskid)

    def finish(self, taskid, succeeded=True, engine=0):
        self.status[taskid] = (succeeded, engine)
        return self.graph.finished(taskid, succeeded, engine)


def dep(*ids, all=True, success=True, failure=False):  # noqa: A002 (the wire's name)
    return GraphDependency(tuple(ids), all, success, failure)


# -- after: all -------------------------------------------------------------------------
def test_after_all_waits_for_every_task_then_is_met():
    world = World(running=[1, 2])
    task = Item("t")
    assert world.graph.add(task, dep(1, 2), None) == (WAITING, None)
    assert task.blocked is not None and len(world.graph) == 2
    assert world.finish(1) == []
    assert world.finish(2) == [(task, MET, None)]
    assert task.blocked is None and len(world.graph) == 0


def test_after_all_is_impossible_as_soon_as_one_task_fails():
    world = World(running=[1, 2, 3])
    task = Item("t")
    assert world.graph.add(task, dep(1, 2, 3), None)[0] == WAITING
    [(decided, state, why)] = world.finish(2, succeeded=False)
    assert decided is task and state == IMPOSSIBLE
    assert why == "a task of its after dependency did not finish as required (succeeded)"
    assert world.finish(1) == [] and world.finish(3) == []  # decided once only


def test_after_all_of_finished_tasks_is_decided_at_once():
    world = World(succeeded={1: 0, 2: 1})
    assert world.graph.add(Item("t"), dep(1, 2), None) == (MET, None)
    assert len(world.graph) == 0
    world = World(succeeded={1: 0}, failed={2: 1})
    state, why = world.graph.add(Item("t"), dep(1, 2), None)
    assert state == IMPOSSIBLE and "did not finish as required (succeeded)" in why


def test_failed_dependencies_with_success_only_are_impossible():
    world = World(failed={1: 0})
    task = Item("t")
    state, why = world.graph.add(task, dep(1, success=True, failure=False), None)
    assert state == IMPOSSIBLE and "(succeeded)" in why
    assert task.blocked is None and len(world.graph) == 0


# -- after: any ---------------------------------------------------------------------------
def test_after_any_is_met_by_the_first_task_that_counts():
    world = World(running=[1, 2, 3])
    task = Item("t")
    assert world.graph.add(task, dep(1, 2, 3, all=False), None)[0] == WAITING
    assert world.finish(3, succeeded=False) == []  # against, but others may still count
    assert world.finish(1) == [(task, MET, None)]
    assert world.finish(2) == []


def test_after_any_is_impossible_once_every_task_is_against():
    world = World(running=[1, 2])
    task = Item("t")
    world.graph.add(task, dep(1, 2, all=False), None)
    assert world.finish(1, succeeded=False) == []
    [(decided, state, why)] = world.finish(2, succeeded=False)
    assert decided is task and state == IMPOSSIBLE
    assert why == "no task of its after dependency finished as required (succeeded)"


def test_all_failed_with_all_false_at_submission_is_impossible():
    world = World(failed={1: 0, 2: 1})
    state, why = world.graph.add(Item("t"), dep(1, 2, all=False), None)
    assert state == IMPOSSIBLE and why.startswith("no task of its after dependency")


# -- success / failure --------------------------------------------------------------------
def test_failure_only_is_met_by_failures_and_against_successes():
    world = World(running=[1, 2])
    on_failure, blocked_by_success = Item("f"), Item("s")
    world.graph.add(on_failure, dep(1, success=False, failure=True), None)
    world.graph.add(blocked_by_success, dep(2, success=False, failure=True), None)
    assert world.finish(1, succeeded=False) == [(on_failure, MET, None)]
    [(decided, state, why)] = world.finish(2, succeeded=True)
    assert decided is blocked_by_success and state == IMPOSSIBLE and "(failed)" in why


def test_success_or_failure_is_met_however_the_tasks_end():
    world = World(running=[1, 2])
    task = Item("t")
    world.graph.add(task, dep(1, 2, success=True, failure=True), None)
    assert world.finish(1, succeeded=False) == []
    assert world.finish(2, succeeded=True) == [(task, MET, None)]
    world = World(succeeded={1: 0}, failed={2: 1})
    assert world.graph.add(Item("x"), dep(1, 2, success=True, failure=True), None) == (MET, None)


# -- unknown tasks ------------------------------------------------------------------------
def test_nonexistent_ids_make_the_dependency_invalid_and_nothing_is_kept():
    world = World(running=[1])
    task = Item("t")
    state, why = world.graph.add(task, dep(1, 7, 5), dep(9))
    assert state == INVALID
    assert why == ("it depends on tasks that do not exist (never submitted, or purged): "
                   "[5, 7, 9]")
    assert task.blocked is None and len(world.graph) == 0
    assert world.finish(1) == []  # task 1's finish reports nothing


# -- follow -------------------------------------------------------------------------------
def test_follow_all_on_one_engine_is_met_on_that_engine():
    world = World(running=[1, 2])
    task = Item("t")
    assert world.graph.add(task, None, dep(1, 2))[0] == WAITING
    assert world.finish(1, engine=3) == []
    assert world.finish(2, engine=3) == [(task, MET, frozenset({3}))]


def test_follow_all_over_several_engines_is_impossible():
    world = World(running=[1, 2])
    task = Item("t")
    world.graph.add(task, None, dep(1, 2, all=True))
    world.finish(1, engine=0)
    [(decided, state, why)] = world.finish(2, engine=1)
    assert decided is task and state == IMPOSSIBLE
    assert why == ("its follow dependencies ran on several engines ([0, 1]): it cannot "
                   "follow all of them")
    # and decided at once when they had finished already
    world = World(succeeded={1: 0, 2: 1})
    state, why = world.graph.add(Item("u"), None, dep(1, 2))
    assert state == IMPOSSIBLE and "several engines ([0, 1])" in why


def test_follow_any_is_met_on_the_engines_of_the_tasks_met_so_far():
    world = World(succeeded={1: 0, 2: 4}, failed={3: 5})
    assert world.graph.add(Item("t"), None, dep(1, 2, 3, all=False)) == (MET, frozenset({0, 4}))
    world = World(running=[1, 2])
    task = Item("u")
    world.graph.add(task, None, dep(1, 2, all=False))
    assert world.finish(2, engine=6) == [(task, MET, frozenset({6}))]


def test_follow_failed_tasks_with_success_only_is_impossible():
    world = World(running=[1])
    task = Item("t")
    world.graph.add(task, None, dep(1))
    [(_, state, why)] = world.finish(1, succeeded=False, engine=2)
    assert state == IMPOSSIBLE
    assert why == "a task of its follow dependency did not finish as required (succeeded)"


def test_follow_of_failures_keeps_to_the_engine_they_failed_on():
    world = World(running=[1])
    task = Item("t")
    world.graph.add(task, None, dep(1, success=False, failure=True))
    assert world.finish(1, succeeded=False, engine=2) == [(task, MET, frozenset({2}))]


def test_a_task_that_never_reached_an_engine_adds_no_engine_to_follow():
    world = World(running=[1])
    task = Item("t")
    world.graph.add(task, None, dep(1, success=True, failure=True))
    assert world.finish(1, succeeded=False, engine=None) == [(task, MET, frozenset())]


def test_after_and_follow_on_different_tasks_need_both():
    world = World(running=[1, 2])
    task = Item("t")
    world.graph.add(task, dep(1), dep(2))
    assert world.finish(2, engine=7) == []
    assert world.finish(1, engine=3) == [(task, MET, frozenset({7}))]
    world = World(running=[1, 2])
    task = Item("u")
    world.graph.add(task, dep(1), dep(2))
    [(_, state, why)] = world.finish(1, succeeded=False)
    assert state == IMPOSSIBLE and "its after dependency" in why


def test_after_and_follow_naming_the_same_tasks_wait_for_all_of_them():
    world = World(running=[1, 2])
    task = Item("t")
    assert world.graph.add(task, dep(1, 2), dep(1, 2))[0] == WAITING
    assert world.finish(1, engine=0) == []  # task 2 still runs
    assert world.finish(2, engine=0) == [(task, MET, frozenset({0}))]


def test_after_and_follow_sharing_a_task_are_decided_when_all_finish():
    world = World(running=[1, 2])
    task = Item("t")
    world.graph.add(task, dep(1, 2), dep(1))
    assert world.finish(1, engine=5) == []
    assert world.finish(2, engine=5) == [(task, MET, frozenset({5}))]


def test_repeated_ids_in_one_dependency_count_once():
    world = World(running=[1, 2])
    task = Item("t")
    world.graph.add(task, dep(1, 1, 2), None)
    assert world.finish(1) == []
    assert world.finish(2) == [(task, MET, None)]


# -- forget -------------------------------------------------------------------------------
def test_a_forgotten_task_is_skipped_when_its_dependencies_finish():
    world = World(running=[1, 2])
    gone, kept = Item("gone"), Item("kept")
    world.graph.add(gone, dep(1), None)
    world.graph.add(kept, dep(1), None)
    world.graph.forget(gone)
    assert gone.blocked is None
    assert world.finish(1) == [(kept, MET, None)]
    world.graph.forget(Item("never blocked"))  # nothing to forget: nothing happens
    world.graph.forget(kept)  # decided already: nothing happens


# -- cost ---------------------------------------------------------------------------------
def test_a_long_chain_of_successes_settles_one_link_per_finish():
    n = 10_000
    world = World(running=[0])
    items = [Item(str(i)) for i in range(n)]
    for i in range(1, n):
        assert world.graph.add(items[i], dep(i - 1), None)[0] == WAITING
        world.status[i] = RUNNING
    for i in range(n - 1):
        assert world.finish(i) == [(items[i + 1], MET, None)]
    assert len(world.graph) == 0


def test_a_long_chain_of_failures_cascades_without_recursion():
    n = 10_000
    world = World(running=[0])
    items = [Item(str(i)) for i in range(n)]
    for i in range(1, n):
        world.graph.add(items[i], dep(i - 1), None)
        world.status[i] = RUNNING
    impossible = []
    endings = deque([0])  # as the task controller does: a loop over the endings
    while endings:
        taskid = endings.popleft()
        for item, state, _ in world.finish(taskid, succeeded=False):
            assert state == IMPOSSIBLE
            impossible.append(item)
            endings.append(int(item.name))
    assert impossible == items[1:]


def test_the_work_per_finished_task_does_not_grow_with_the_graph(monkeypatch):
    n, k = 10_000, 3
    calls = {"finished": 0}
    original = graph_module.Need.finished

    def counted(self, succeeded, engine_id):
        calls["finished"] += 1
        return original(self, succeeded, engine_id)

    monkeypatch.setattr(graph_module.Need, "finished", counted)
    rng = random.Random(7)
    world = World(running=range(k))
    fan_out = dict.fromkeys(range(n), 0)  # how many tasks wait for each task
    edges = 0
    for i in range(k, n):
        parents = rng.sample(range(i), k)
        assert world.graph.add(Item(str(i)), dep(*parents), None)[0] == WAITING
        world.status[i] = RUNNING
        edges += k
        for parent in parents:
            fan_out[parent] += 1
    assert world.lookups == edges  # one status lookup per dependency
    met = 0
    per_finish = []
    for i in range(n):
        before = calls["finished"]
        decided = world.finish(i)
        per_finish.append(calls["finished"] - before)
        assert all(state == MET for _, state, _ in decided)
        met += len(decided)
    assert met == n - k and len(world.graph) == 0
    assert calls["finished"] == edges  # each dependency counted exactly once, in all
    # the work of one finish is its fan-out, not a function of the graph's size
    assert per_finish == [fan_out[i] for i in range(n)]


# -- through the task controller -----------------------------------------------------------
def submit(cluster: TaskHarness, name: str, **options) -> int:
    return submit_one(cluster.tc, encode_task(TaskSpec.string(name, **options)))


def test_the_controller_runs_a_task_after_its_dependencies_on_the_engine_it_follows():
    cluster = TaskHarness(n=2, hwm=None)
    first = submit(cluster, "first")
    assert cluster.placement() == {0: ["first"]}
    then = submit(cluster, "then", after=dep(first), follow=dep(first))
    assert cluster.tc.queue_status()["scheduled"] == 1  # waits for its dependency
    cluster.engines[0].reply()
    assert cluster.placement() == {0: ["then"]}
    cluster.engines[0].reply()
    assert cluster.result(then).ok


def test_the_controller_fails_impossible_and_invalid_dependencies():
    cluster = TaskHarness(n=1, hwm=None)
    bad = submit(cluster, "bad")
    waits = submit(cluster, "waits", after=dep(bad))
    invalid = submit(cluster, "invalid", after=dep(bad, 12345))
    assert cluster.result(invalid).failure().ename == "InvalidDependency"
    cluster.engines[0].fail(RuntimeError("boom"))
    failure = cluster.result(waits).failure()
    assert failure.ename == "ImpossibleDependency"
    assert f"task {waits} cannot run" in failure.evalue


def test_the_controller_settles_a_long_chain_of_failures():
    cluster = TaskHarness(n=1, hwm=None)
    head = submit(cluster, "head")
    ids = [head]
    for i in range(2_000):
        ids.append(submit(cluster, f"link{i}", after=dep(ids[-1])))
    cluster.engines[0].fail(RuntimeError("head failed"))
    assert cluster.tc.queue_status() == {"scheduled": 0, "pending": 0, "succeeded": 0,
                                         "failed": len(ids), "aborted": 0}
    assert cluster.result(ids[-1]).failure().ename == "ImpossibleDependency"


def test_the_controller_waits_for_every_task_named_by_both_after_and_follow():
    cluster = TaskHarness(n=1, hwm=None)
    a, b = submit(cluster, "a"), submit(cluster, "b")
    c = submit(cluster, "c", after=dep(a, b), follow=dep(a, b))
    cluster.engines[0].reply()  # a
    assert cluster.placement() == {0: ["b"]}  # c waits for b
    cluster.engines[0].reply()  # b
    assert cluster.placement() == {0: ["c"]}
    cluster.engines[0].reply()
    assert cluster.result(c).ok


def test_the_controller_runs_a_task_whose_after_and_follow_share_a_task():
    cluster = TaskHarness(n=1, hwm=None)
    a, b = submit(cluster, "a"), submit(cluster, "b")
    c = submit(cluster, "c", after=dep(a, b), follow=dep(a))
    cluster.engines[0].reply()
    cluster.engines[0].reply()
    assert cluster.placement() == {0: ["c"]}
    cluster.engines[0].reply()
    assert cluster.result(c).ok
