"""The status page's service and its Prometheus text, as pure logic on a Clock."""

from __future__ import annotations

import random

from twisted.internet.task import Clock

from plait.adapters.web import prometheus
from plait.kernel.controller.registry import EngineRegistry
from plait.kernel.controller.status import StatusService
from plait.kernel.controller.task import TaskController
from plait.wire.task import TaskSpec, encode_task
from support.fakes import FakeEngine


def test_snapshots_count_engines_tasks_and_the_rate():
    clock = Clock()
    registry = EngineRegistry()
    engines = [FakeEngine(f"u{i}", hold=False) for i in range(2)]
    for engine in engines:
        registry.register(engine, engine.uuid, {})
    tc = TaskController(registry, clock=clock, rng=random.Random(1))
    status = StatusService(registry, tc, clock)
    seen: list[dict] = []
    unsubscribe = status.subscribe(seen.append)
    status.start()
    assert seen[-1]["engine_count"] == 2 and seen[-1]["completed"] == 0
    assert seen[-1]["snapshot_ms"] >= 0  # (what it cost the controller)
    first = tc.reserve(6)
    tc.submit([(first + i, encode_task(TaskSpec.execute("x"))) for i in range(6)])
    for engine in engines:
        while engine.calls:
            engine.reply(None)
    clock.advance(1)
    last = seen[-1]
    assert last["completed"] == 6 and last["rate"] == [6]
    assert sum(e["completed"] for e in last["engines"]) == 6
    assert {e["state"] for e in last["engines"]} == {"idle"}
    clock.advance(0.5)  # someone watches: a snapshot every half second
    assert len(seen) == 3 and seen[-1]["rate"] == [6]
    clock.advance(0.5)
    assert seen[-1]["rate"] == [6, 0] and seen[-1]["tasks_per_second"] == 3.0
    registry.unregister(1, "gone")  # a snapshot at once, not at the next second
    clock.advance(0)
    assert seen[-1]["engine_count"] == 1
    unsubscribe()
    n = len(seen)
    clock.advance(5)
    assert len(seen) == n  # unsubscribed
    before, seconds = status.last, len(status.current()["rate"])
    clock.advance(0.5)  # no one watches: a snapshot a second, for status.json
    assert status.last is before
    clock.advance(0.5)
    assert status.last is not before and len(status.current()["rate"]) == seconds + 1
    clock.pump([0.5] * 4)
    clock.advance(1.0)  # (a late reactor: two intervals at once keep the seconds)
    clock.advance(0.5)
    assert len(status.current()["rate"]) == seconds + 4
    text = prometheus(status.current())
    assert "plait_engines 1\n" in text and "plait_tasks_completed_total 6\n" in text
    assert 'plait_engine_completed_total{engine="0"}' in text
    status.stop()


def test_a_detached_service_no_longer_watches_the_tasks_or_the_engines():
    """What a page that could not serve leaves behind: nothing on the task or
    the registry's paths."""
    clock = Clock()
    registry = EngineRegistry()
    engine = FakeEngine("u0", hold=False)
    registry.register(engine, engine.uuid, {})
    tc = TaskController(registry, clock=clock, rng=random.Random(1))
    status = StatusService(registry, tc, clock)
    status.start()
    status.detach()
    first = tc.reserve(3)
    tc.submit([(first + i, encode_task(TaskSpec.execute("x"))) for i in range(3)])
    while engine.calls:
        engine.reply(None)
    registry.register(FakeEngine("u1", hold=False), "u1", {})
    clock.advance(5)
    assert status.current()["completed"] == 0 and status.current()["engine_count"] == 1
    assert status not in registry._observers and status._finished not in tc._finish_observers


class _Records:
    """A hub's records as the status page's search reads them (ids 0 .. n - 1)."""

    def __init__(self, n: int, failed_every: int):
        self.first_free_id = n
        self.rows = [{"id": i, "msg_id": f"m{i}", "engine_id": i % 2,
                      "status": "failed" if i % failed_every == 0 else "succeeded"}
                     for i in range(n)]
        self.read = 0  # records the queries matched

    def query(self, query: dict, keys: list[str]):
        from twisted.internet import defer

        wanted = query["id"]
        found = [r for r in self.rows
                 if (r["id"] >= wanted["$gte"] if isinstance(wanted, dict) else r["id"] == wanted)
                 and all(r[k] == v for k, v in query.items() if k != "id")]
        self.read += len(found)
        return defer.succeed(found)


def test_the_history_search_reads_back_only_as_far_as_it_needs():
    from plait.kernel.controller.status import SEARCH_LIMIT, SEARCH_WINDOW

    hub = _Records(2 * SEARCH_WINDOW, failed_every=20_000)
    status = StatusService(EngineRegistry(), None, Clock(), hub=hub)
    newest = status.search().result
    assert [r["id"] for r in newest] == list(range(2 * SEARCH_WINDOW - 1,
                                                   2 * SEARCH_WINDOW - 1 - SEARCH_LIMIT, -1))
    assert hub.read <= 4 * SEARCH_LIMIT  # (a few hundred records, not the window)
    hub.read = 0
    failed = status.search("failed").result  # few: widened to the whole window
    assert [r["id"] for r in failed] == [180_000, 160_000, 140_000, 120_000, 100_000]
    assert hub.read <= 10  # (each widening reads only what matches)
    one = status.search(engine=1).result
    assert len(one) == SEARCH_LIMIT and {r["engine_id"] for r in one} == {1}
