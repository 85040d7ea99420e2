"""The service of ``plait.parallel``'s clients (ParallelService, ParallelSession)
as pure logic: the real TaskController and hub over fake engines, on a Clock.

The session's long poll gathers what happens in one reactor turn with
``reactor.callLater(0, ...)``: the module's reactor is a Clock here, so a
test says when the turn ends (``clock.advance(0)``).
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from plait.kernel.controller import parallel as parallel_module
from plait.kernel.controller.hub import Hub
from plait.kernel.controller.hubstore import MemoryStore
from plait.kernel.controller.parallel import ParallelService, ParallelSession
from plait.kernel.controller.registry import EngineRegistry
from plait.kernel.controller.task import TaskController
from plait.wire.errors import InvalidTaskID
from plait.wire.records import msg_id
from plait.wire.serialize import deserialize, serialize
from plait.wire.task import GraphDependency, TaskSpec, encode_task
from support.fakes import FakeEngine, fired, pending

PREFIX = 0xFEED_0000_0000_BEEF


class FakeMultiEngine:
    """What the service asks of the MultiEngine: ``kill``, recorded."""

    def __init__(self):
        self.kills: list[tuple] = []

    def kill(self, controller, targets, block):
        self.kills.append((controller, targets, block))
        return defer.succeed([])


class Harness:
    """Fake engines, the registry, a TaskController and a hub, and the service."""

    def __init__(self, monkeypatch, n=2, hwm=None, db="memory"):
        self.clock = Clock()
        self.clock.advance(1000)
        monkeypatch.setattr(parallel_module, "reactor", self.clock)
        self.registry = EngineRegistry()
        self.engines: dict[int, FakeEngine] = {}
        for _ in range(n):
            self.add()
        self.hub = Hub(MemoryStore(), PREFIX)
        self.tc = TaskController(self.registry, "leastload", hwm, clock=self.clock,
                                 rng=random.Random(1), hub=self.hub)
        self.multiengine = FakeMultiEngine()
        self.service = ParallelService(self.tc, self.registry, self.hub, self.multiengine, db)

    def add(self) -> FakeEngine:
        engine = FakeEngine(f"uuid-{len(self.engines)}", hold=False)
        self.engines[self.registry.register(engine, engine.uuid, {})] = engine
        return engine

    def placement(self) -> dict[int, list[str]]:
        return {i: e.names() for i, e in self.engines.items() if e.calls}

    def reply_all(self, value=None) -> None:
        """Every engine answers every task it holds."""
        for engine in self.engines.values():
            while engine.calls:
                engine.reply(value)

    def turn(self) -> None:
        """End the reactor turn: the waiting long polls answer."""
        self.clock.advance(0)


@pytest.fixture
def cluster(monkeypatch):
    return Harness(monkeypatch)


def run(session: ParallelSession, *names: str, **options) -> list[int]:
    """Submit ``execute`` tasks named ``names`` (their source) in one message."""
    first = session.reserve(len(names))
    ids = list(range(first, first + len(names)))
    data = [encode_task(TaskSpec.execute(name, **options)) for name in names]
    assert session.submit(list(zip(ids, data, strict=True))) == []
    return ids


def answer(d: defer.Deferred):
    """What a long poll answered: ``([task ids], engine ids or None)`` (and no output)."""
    records, engines, output = fired(d)
    assert output == []
    return [r.taskid for r in records], engines


# -- the long poll ---------------------------------------------------------------------------
def test_results_waits_then_answers_the_records_of_the_turn(cluster):
    session = cluster.service.session()
    a, b, c = run(session, "a", "b", "c")
    assert cluster.placement() == {0: ["a", "c"], 1: ["b"]}
    d = session.results()
    assert pending(d)
    cluster.engines[1].reply("B")
    cluster.engines[0].reply("A")
    assert pending(d)  # gathered until the turn ends
    cluster.turn()
    records, engines, _ = fired(d)
    assert [r.taskid for r in records] == [b, a] and engines is None
    assert records[0].status == "succeeded" and deserialize(records[0].payload) == "B"
    assert records[1].engineid == 0
    d = session.results()
    assert pending(d)
    cluster.engines[0].fail(ValueError("bad c"))
    cluster.turn()
    [record], _, _ = fired(d)
    assert record.taskid == c and record.status == "failed"
    assert record.failure().ename == "ValueError"


def test_records_finished_between_polls_are_kept_for_the_next(cluster):
    session = cluster.service.session()
    a, b = run(session, "a", "b")
    cluster.engines[0].reply()
    cluster.engines[1].reply()
    assert answer(session.results()) == ([a, b], None)  # at once: nothing to wait for
    assert pending(session.results())


def test_each_session_hears_of_its_own_tasks_only(cluster):
    mine, theirs = cluster.service.session(), cluster.service.session()
    [a] = run(mine, "a")
    [b] = run(theirs, "b")
    waiting = mine.results(), theirs.results()
    cluster.engines[1].reply()  # b
    cluster.turn()
    assert pending(waiting[0]) and answer(waiting[1]) == ([b], None)
    cluster.engines[0].reply()  # a
    cluster.turn()
    assert answer(waiting[0]) == ([a], None)
    assert fired(cluster.hub.records([a]))[0]["client_uuid"] == mine.uuid
    assert fired(cluster.hub.records([b]))[0]["client_uuid"] == theirs.uuid
    assert mine.uuid != theirs.uuid


def test_engine_changes_answer_with_the_engine_ids(cluster):
    session = cluster.service.session()
    d = session.results()
    cluster.add()
    cluster.turn()
    assert answer(d) == ([], [0, 1, 2])
    d = session.results()
    cluster.registry.unregister(0, "killed")
    cluster.registry.unregister(2, "killed")  # in the same turn: one answer
    cluster.turn()
    assert answer(d) == ([], [1])
    assert pending(session.results())  # nothing new since


def test_an_engine_change_between_polls_is_told_at_the_next(cluster):
    session = cluster.service.session()
    [a] = run(session, "a")
    cluster.add()
    cluster.engines[0].reply()
    assert answer(session.results()) == ([a], [0, 1, 2])
    assert pending(session.results())


def test_properties_changes_are_no_news(cluster):
    session = cluster.service.session()
    d = session.results()
    cluster.registry.set_properties(0, {"ram": 4})
    cluster.turn()
    assert pending(d)


def test_a_second_results_call_while_one_waits_fails(cluster):
    session = cluster.service.session()
    first = session.results()
    with pytest.raises(RuntimeError, match="a results\\(\\) call is waiting already"):
        fired(session.results())
    [a] = run(session, "a")
    cluster.engines[0].reply()
    cluster.turn()
    assert answer(first) == ([a], None)  # the first one still answers


def test_a_cancelled_poll_makes_room_for_another(cluster):
    session = cluster.service.session()
    first = session.results()
    first.cancel()
    with pytest.raises(defer.CancelledError):
        fired(first)
    [a] = run(session, "a")
    cluster.engines[0].reply()
    cluster.turn()  # the answer scheduled for nobody does nothing
    assert answer(session.results()) == ([a], None)


def test_a_poll_cancelled_while_its_answer_is_scheduled(cluster):
    session = cluster.service.session()
    first = session.results()
    [a] = run(session, "a")
    cluster.engines[0].reply()  # an answer is scheduled for the end of the turn
    first.cancel()
    first.addErrback(lambda f: f.trap(defer.CancelledError))
    second = session.results()  # the record is ready: answered at once
    assert answer(second) == ([a], None)
    cluster.turn()
    third = session.results()
    assert pending(third)
    [b] = run(session, "b")
    cluster.reply_all()
    cluster.turn()
    assert answer(third) == ([b], None)


def test_refused_submissions_come_back_as_failed_records(cluster):
    session = cluster.service.session()
    d = session.results()
    data = encode_task(TaskSpec.execute("x"))
    refused = session.submit([(123, data)])  # never reserved
    assert refused == [(123, "task id 123 was never reserved")]
    cluster.turn()
    [record], _, _ = fired(d)
    assert record.taskid == 123 and record.status == "failed"
    failure = record.failure()
    assert failure.ename == "TaskSubmissionError" and "never reserved" in failure.evalue


def test_the_session_submits_later_tasks_whatever_it_is_told(cluster):
    session = cluster.service.session()
    taskid = session.reserve(1)
    session.submit([(taskid, encode_task(TaskSpec.execute("x")))], later=False)
    assert fired(cluster.hub.records([taskid]))[0]["kind"] == "later"


# -- pushed news -----------------------------------------------------------------------------
def test_pushed_news_comes_once_per_turn_with_everything_of_it(cluster):
    session = cluster.service.session()
    heard: list = []
    [a] = run(session, "a")
    cluster.engines[0].reply("A")  # finished before the push was asked for: not lost
    session.push_results(heard.append)
    assert heard == []  # at the end of the turn
    cluster.turn()
    [(records, engines, output)] = heard
    assert [r.taskid for r in records] == [a] and engines is None and output == []
    b, c = run(session, "b", "c")
    cluster.reply_all("x")
    cluster.add()
    cluster.turn()
    assert len(heard) == 2  # two tasks and an engine change: one push
    records, engines, _ = heard[1]
    assert sorted(r.taskid for r in records) == [b, c] and engines == [0, 1, 2]
    cluster.turn()
    assert len(heard) == 2  # no news, no push


def test_a_pushed_session_answers_no_poll_and_a_polled_one_is_not_pushed(cluster):
    pushed = cluster.service.session()
    pushed.push_results(lambda news: None)
    d = pushed.results()
    with pytest.raises(RuntimeError, match="pushed"):
        fired(d)
    polled = cluster.service.session()
    waiting = polled.results()
    with pytest.raises(RuntimeError, match="waiting"):
        polled.push_results(lambda news: None)
    assert pending(waiting)


def test_a_failing_push_is_logged_and_the_session_goes_on(cluster):
    session = cluster.service.session()
    heard: list = []

    def deliver(news):
        heard.append(news)
        if len(heard) == 1:
            raise ConnectionError("gone")

    session.push_results(deliver)
    run(session, "a")
    cluster.reply_all()
    cluster.turn()
    run(session, "b")
    cluster.reply_all()
    cluster.turn()
    assert len(heard) == 2


def test_a_closed_session_pushes_nothing(cluster):
    session = cluster.service.session()
    heard: list = []
    session.push_results(heard.append)
    run(session, "a")
    session.close()
    cluster.reply_all()
    cluster.turn()
    assert heard == []
    with pytest.raises(RuntimeError, match="closed"):
        session.push_results(heard.append)


# -- closing -----------------------------------------------------------------------------------
def test_close_cancels_the_waiting_poll_and_stops_listening(cluster):
    session = cluster.service.session()
    [a] = run(session, "a")
    spare = session.reserve(5)
    d = session.results()
    session.close()
    with pytest.raises(defer.CancelledError):
        fired(d)
    assert session.closed
    cluster.engines[0].reply()  # finishes after the close: not kept for anyone
    assert session._ready == []
    cluster.add()  # the registry no longer tells the session
    assert session not in cluster.registry._observers
    assert not session._engines_changed
    # its unused ids are released
    refused = cluster.tc.submit([(spare, encode_task(TaskSpec.execute("y")))])
    assert refused and "not reserved" in refused[0][1]
    # the task itself finished, and the hub has its record
    assert fired(cluster.hub.records([a]))[0]["status"] == "succeeded"
    session.close()  # again: nothing happens


def test_results_on_a_closed_session_fails_at_once(cluster):
    session = cluster.service.session()
    session.close()
    d = session.results()
    assert not pending(d)
    d.addErrback(lambda _: None)


# -- the service ------------------------------------------------------------------------------
def test_info_describes_the_controller(monkeypatch):
    cluster = Harness(monkeypatch, n=3, hwm=2, db="sqlite")
    info = cluster.service.info()
    assert info == {"scheme": "leastload", "hwm": 2, "engines": 3, "prefix": PREFIX,
                    "db": "sqlite", "ids": [0, 1, 2], "dashboard_url": None}
    assert "marks" in cluster.tc.info()  # the task service's own info is untouched


def test_get_ids_and_wait_for_engines(cluster):
    assert cluster.service.get_ids() == [0, 1]
    assert fired(cluster.service.wait_for_engines(2)) == [0, 1]
    d = cluster.service.wait_for_engines(3)
    assert pending(d)
    cluster.add()
    assert fired(d) == [0, 1, 2]


def test_queue_status_counts_or_lists_per_engine(monkeypatch):
    cluster = Harness(monkeypatch, n=2, hwm=1)
    session = cluster.service.session()
    ids = run(session, "a", "b", "c", "d")
    cluster.engines[0].reply()
    assert cluster.service.queue_status() == {
        0: {"queue": 0, "tasks": 1, "completed": 1}, 1: {"queue": 0, "tasks": 1, "completed": 0},
        "unassigned": 1}
    msg = cluster.service.hub.msg_id
    assert cluster.service.queue_status(verbose=True) == {
        0: {"queue": [], "tasks": [msg(ids[2])], "completed": 1},
        1: {"queue": [], "tasks": [msg(ids[1])], "completed": 0},
        "unassigned": [msg(ids[3])]}


def test_shutdown_asks_the_multiengine(cluster):
    assert fired(cluster.service.shutdown(None, True)) == []
    fired(cluster.service.shutdown([1], False))
    assert cluster.multiengine.kills == [(True, "all", True), (False, [1], True)]


def test_purge_forgets_finished_tasks_in_the_hub_and_the_controller(cluster):
    session = cluster.service.session()
    done, kept, running = run(session, "done", "kept", "running")
    cluster.engines[0].reply()
    cluster.engines[1].reply()
    assert fired(cluster.service.purge([done])) is None
    assert fired(cluster.hub.history()) == [kept, running]
    # a graph dependency on a purged task is invalid now; on a kept one it is met
    invalid, ok = (run(session, "x", after=GraphDependency((done,)))[0],
                   run(session, "y", after=GraphDependency((kept,)))[0])
    records = fired(cluster.hub.records([invalid, ok]))
    assert records[0]["status"] == "failed"
    assert deserialize(records[0]["payload"]).ename == "InvalidDependency"
    assert records[1]["status"] is None  # waiting for an engine, or running


def test_purge_refuses_pending_tasks(cluster):
    session = cluster.service.session()
    done, running = run(session, "done", "running")
    cluster.engines[0].reply()
    with pytest.raises(ValueError, match="cannot purge unfinished tasks"):
        fired(cluster.service.purge([done, running]))
    assert fired(cluster.hub.history()) == [done, running]
    # nothing was forgotten: a dependency on the finished task still counts
    [after] = run(session, "after", after=GraphDependency((done,)))
    assert fired(cluster.hub.records([after]))[0]["status"] is None


def test_purge_everything(cluster):
    session = cluster.service.session()
    a, b, running = run(session, "a", "b", "running")
    cluster.engines[0].reply()
    cluster.engines[1].reply()
    assert fired(cluster.service.purge(None)) is None
    assert fired(cluster.hub.history()) == [running]
    [invalid] = run(session, "x", after=GraphDependency((a,), all=False))
    assert fired(cluster.hub.records([invalid]))[0]["status"] == "failed"


def test_resubmit_runs_finished_tasks_again_under_new_ids(cluster):
    first, second = cluster.service.session(), cluster.service.session()
    a, b = run(first, "a", "b")
    cluster.engines[0].reply("A")
    cluster.engines[1].fail(RuntimeError("b failed"))
    new = fired(second.resubmit([b, a]))
    assert len(new) == 2 and not set(new) & {a, b}
    assert sorted(name for names in cluster.placement().values() for name in names) == [
        "a", "b"]
    records = fired(cluster.hub.records(new))
    assert [r["client_uuid"] for r in records] == [second.uuid] * 2
    assert [r["request"] for r in records] == [
        r["request"] for r in fired(cluster.hub.records([b, a]))]
    d = second.results()
    cluster.reply_all("again")
    cluster.turn()
    records, _, _ = fired(d)
    assert sorted(r.taskid for r in records) == sorted(new)
    assert all(r.ok for r in records)
    assert answer(first.results()) == ([a, b], None)  # the first session's own only


def test_resubmit_refuses_pending_tasks(cluster):
    session = cluster.service.session()
    done, running = run(session, "done", "running")
    cluster.engines[0].reply()
    with pytest.raises(ValueError, match=f"task {msg_id(PREFIX, running)} has not finished"):
        fired(session.resubmit([done, running]))
    assert cluster.placement() == {1: ["running"]}  # nothing submitted
    assert fired(cluster.hub.history()) == [done, running]


def test_resubmit_refuses_unknown_and_purged_tasks(cluster):
    session = cluster.service.session()
    [done] = run(session, "done")
    cluster.engines[0].reply()
    with pytest.raises(InvalidTaskID, match=f"no task {msg_id(PREFIX, 999)}"):
        fired(session.resubmit([done, 999]))
    fired(cluster.service.purge([done]))
    with pytest.raises(InvalidTaskID, match="never submitted, or purged"):
        fired(session.resubmit([done]))
    assert cluster.placement() == {} and fired(cluster.hub.history()) == []


def test_resubmit_refuses_a_record_without_its_request(cluster):
    session = cluster.service.session()
    [done] = run(session, "done")
    cluster.engines[0].reply()
    cluster.hub.store.update(done, {"request": None})
    with pytest.raises(ValueError, match="its request was not kept"):
        fired(session.resubmit([done]))


def test_direct_requests_are_pinned_to_their_engine(cluster):
    session = cluster.service.session()
    [to_one] = run(session, "to one", targets=(1,), pinned=True)
    [to_one_too] = run(session, "to one too", targets=(1,), pinned=True)
    assert cluster.placement() == {1: ["to one", "to one too"]}
    d = session.results()
    cluster.engines[1].reply(1)
    cluster.engines[1].reply(2)
    cluster.turn()
    records, _, _ = fired(d)
    assert [(r.taskid, r.engineid, deserialize(r.payload)) for r in records] == [
        (to_one, 1, 1), (to_one_too, 1, 2)]


def test_graph_dependencies_between_later_tasks(cluster):
    session = cluster.service.session()
    [first] = run(session, "first")
    engine = next(i for i, e in cluster.engines.items() if e.calls)
    cluster.engines[engine].reply("1st")
    [then] = run(session, "then", after=GraphDependency((first,)),
                 follow=GraphDependency((first,)))
    assert cluster.placement() == {engine: ["then"]}  # on the engine it follows
    cluster.engines[engine].reply()
    records = fired(cluster.hub.records([first, then]))
    assert [r["status"] for r in records] == ["succeeded", "succeeded"]
    assert records[1]["follow"] == [first] and records[1]["after"] == [first]
    assert records[0]["payload"] == serialize("1st")


def test_a_session_is_a_task_session_of_the_later_generation(cluster):
    session = cluster.service.session()
    assert isinstance(session, ParallelSession) and session.service is cluster.service
    owner = SimpleNamespace(uuid="somebody else")
    first = session.reserve(1, owner)
    assert session.submit([(first, encode_task(TaskSpec.execute("x")))], owner) == []
    assert fired(cluster.hub.records([first]))[0]["client_uuid"] == "somebody else"


def test_what_running_tasks_print_comes_with_the_news(cluster):
    session = cluster.service.session()
    a, b = run(session, "a", "b")
    d = session.results()
    cluster.tc.engine_output(0, [(a, "stdout", "hello "), (a, "stdout", "world\n")])
    cluster.clock.advance(0)
    records, engines, output = fired(d)
    assert records == [] and output == [(a, 0, "stdout", "hello world\n")]
    cluster.tc.engine_output(0, [(b, "stdout", "not running there")])  # b runs on 1
    cluster.tc.engine_output(1, [(b, "stderr", "oops")])
    cluster.clock.advance(0)
    assert fired(session.results())[2] == [(b, 1, "stderr", "oops")]

