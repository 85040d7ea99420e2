"""Controller services as pure logic: in-process engines, no network."""

from __future__ import annotations

import inspect

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from plait.adapters.engine import RemoteEngine
from plait.adapters.parallel import FOLLOWERS, FoolscapParallel, FoolscapParallelSession
from plait.interfaces.engine import IEngine, IEngineQueue, IEngineRegistry
from plait.interfaces.multiengine import IMultiEngine, targets_from_wire, targets_to_wire
from plait.interfaces.parallel import IHub, IParallel, IParallelSession, RIParallel
from plait.kernel.controller.hub import Hub
from plait.kernel.controller.hubstore import MemoryStore
from plait.kernel.controller.multiengine import KILL_TIMEOUT, MultiEngine, _Departures
from plait.kernel.controller.parallel import ParallelService
from plait.kernel.controller.queue import EngineQueue
from plait.kernel.controller.registry import EngineRegistry
from plait.kernel.controller.results import ResultStore
from plait.kernel.controller.task import TaskController
from plait.wire.errors import (
    EngineError,
    InvalidEngineID,
    QueueCleared,
    RemoteFailure,
    ResultAlreadyRetrieved,
    ResultNotCompleted,
)
from plait.wire.serialize import deserialize, dumps_plain, serialize
from support.fakes import FakeEngine


def test_interfaces_are_provided():
    registry = EngineRegistry()
    engine = FakeEngine()
    registry.register(engine, "u", {})
    verifyObject(IEngine, engine)
    verifyObject(IEngine, RemoteEngine(object(), "u"))
    verifyObject(IEngineRegistry, registry)
    verifyObject(IEngineQueue, registry.get_queue(0))
    verifyObject(IMultiEngine, MultiEngine(registry))


def test_queue_runs_in_order_with_a_window():
    engine = FakeEngine()
    q = EngineQueue(engine, window=2)
    results = [q.submit(lambda e, i=i: e.execute(str(i)), label=i) for i in range(4)]
    assert [c[1] for c in engine.held] == [("0",), ("1",)]  # two in flight
    assert q.status() == {"queue": [2, 3], "pending": [0, 1]}
    engine.answer("a")
    assert [c[1] for c in engine.held] == [("1",), ("2",)]
    assert results[0].result == (True, serialize("a"))
    assert len(q) == 3


def test_queue_clear_and_engine_loss():
    engine = FakeEngine()
    q = EngineQueue(engine, window=1)
    ds = [q.submit(lambda e: e.execute("x"), label=i) for i in range(3)]
    assert q.clear() == 2
    for d in ds[1:]:
        assert d.result.check(QueueCleared)
        d.addErrback(lambda f: None)
    q.fail_all(EngineError("engine 0 was lost"))
    assert ds[0].result.check(EngineError)
    ds[0].addErrback(lambda f: None)
    late = q.submit(lambda e: e.execute("y"))
    assert late.result.check(EngineError)
    late.addErrback(lambda f: None)
    engine.answer("ignored")  # a late answer from the dead engine is dropped quietly


def test_registry_ids_observers_and_waiters():
    registry = EngineRegistry()
    seen = []

    class Observer:
        def engine_added(self, i):
            seen.append(("added", i))

        def engine_removed(self, i):
            seen.append(("removed", i))

        def properties_changed(self, i):
            seen.append(("props", i))

    registry.add_observer(Observer())
    waiting = registry.wait_for_engines(2)
    assert not waiting.called
    a, b = FakeEngine(), FakeEngine()
    assert registry.register(a, "a", {"x": 1}) == 0
    assert registry.register(b, "b", {}) == 1
    assert waiting.result == [0, 1]
    registry.set_properties(1, {"ram": 4})
    registry.unregister(0, "killed")
    assert registry.get_ids() == [1]
    assert registry.register(FakeEngine(), "c", {}) == 2  # ids are never reused
    assert seen == [("added", 0), ("added", 1), ("props", 1), ("removed", 0), ("added", 2)]
    with pytest.raises(InvalidEngineID, match=r"no engine with id 0; registered engines: \[1, 2\]"):
        registry.get_engine(0)


def test_registry_ids_go_on_from_the_last_run_with_restore(tmp_path):
    path = tmp_path / "engineids"
    first = EngineRegistry(ids_path=path)
    assert [first.register(FakeEngine(), u, {}) for u in "abc"] == [0, 1, 2]
    assert path.read_text() == "3\n0,1,2\n" and oct(path.stat().st_mode & 0o777) == "0o600"
    # a controller started again after it died: new engines get new ids, and the
    # engines of the last run rejoin with theirs
    again = EngineRegistry(ids_path=path, restore=True)
    assert again.register(FakeEngine(), "new", {}) == 3
    assert again.register(FakeEngine(), "b", {}, engine_id=1, rejoin=True) == 1
    # a rejoin never takes the id of an engine that holds it now
    assert again.register(FakeEngine(), "x", {}, engine_id=3, rejoin=True) == 4
    assert again.get_ids() == [1, 3, 4]
    # an id never given is not claimed
    assert again.register(FakeEngine(), "y", {}, engine_id=99, rejoin=True) == 5


def test_registry_without_restore_starts_from_0_and_lets_the_last_run_rejoin(tmp_path):
    path = tmp_path / "engineids"
    first = EngineRegistry(ids_path=path)
    for u in "abcd":
        first.register(FakeEngine(), u, {})
    fresh = EngineRegistry(ids_path=path)  # ipcontroller started again by hand
    assert path.read_text() == "0\n\n"
    assert fresh.register(FakeEngine(), "c", {}, engine_id=2, rejoin=True) == 2
    assert fresh.register(FakeEngine(), "new", {}) == 3
    assert fresh.register(FakeEngine(), "a", {}, engine_id=0, rejoin=True) == 0
    assert fresh.register(FakeEngine(), "d", {}, engine_id=3, rejoin=True) == 4  # 3 is taken


def test_a_late_disconnect_notice_does_not_drop_the_engine_that_took_the_id_over():
    from plait.adapters.engine import FoolscapEngineRegistrar

    registry = EngineRegistry()

    class Ref:  # a foolscap reference: it only hears of its disconnection
        def __init__(self):
            self.watchers = []

        def notifyOnDisconnect(self, callback, *args):
            self.watchers.append((callback, args))

        def lose(self):
            for callback, args in self.watchers:
                callback(*args)

    registrar = FoolscapEngineRegistrar(registry, channels=None, blobs=None)
    old, new = Ref(), Ref()
    props = dumps_plain({})
    assert registrar.remote_register_engine(old, "u", props)[0] == 0
    # the engine joins again before its old connection is seen to go
    assert registrar.remote_register_engine(new, "u", props, b"", 0, True)[0] == 0
    old.lose()
    assert registry.get_ids() == [0]
    new.lose()
    assert registry.get_ids() == []


def test_result_store():
    store = ResultStore()
    d: defer.Deferred = defer.Deferred()
    rid = store.add(d)
    assert store.get(rid, block=False).result.check(ResultNotCompleted)
    waiter = store.get(rid, block=True)
    assert not waiter.called
    d.callback("value")
    assert waiter.result == "value"
    assert store.get(rid, block=True).result.check(ResultAlreadyRetrieved)
    store.add(defer.succeed(1))
    assert store.flush() == 1 and len(store) == 0


def test_multiengine_targets_and_failures():
    registry = EngineRegistry()
    engines = [FakeEngine() for _ in range(3)]
    for i, e in enumerate(engines):
        registry.register(e, f"u{i}", {})
    me = MultiEngine(registry)
    with pytest.raises(InvalidEngineID, match="no engine with id 7"):
        me.resolve_targets([0, 7])
    assert me.resolve_targets("all") == [0, 1, 2] and me.resolve_targets(1) == [1]
    d = me.execute("x", targets=[2, 0])
    engines[0].answer({"n": 0})
    registry.unregister(2, "killed")  # engine 2 dies with the command running
    (r2, r0) = d.result
    assert r0 == (0, True, serialize({"n": 0}))
    assert r2[:2] == (2, False)
    failure = deserialize(r2[2])
    assert isinstance(failure, RemoteFailure) and failure.ename == "EngineError"
    assert "engine 2 was lost: killed" in failure.evalue


def test_multiengine_non_blocking_goes_through_the_store():
    registry = EngineRegistry()
    e = FakeEngine()
    registry.register(e, "u", {})
    me = MultiEngine(registry)
    rid = me.execute("x", targets=0, block=False).result
    assert isinstance(rid, int)
    assert me.get_pending_result(rid, block=False).result.check(ResultNotCompleted)
    e.answer("done")
    assert me.get_pending_result(rid, block=True).result == [(0, True, serialize("done"))]


def test_properties_are_kept_by_the_controller():
    registry = EngineRegistry()
    registry.register(FakeEngine(), "u", {"os": "linux"})
    me = MultiEngine(registry)
    me.set_properties(dumps_plain({"ram": 8}), targets=0)
    assert deserialize(me.get_properties(None, 0).result[0][2]) == {"os": "linux", "ram": 8}
    assert deserialize(me.has_properties(["ram", "gpu"], 0).result[0][2]) == [True, False]
    ok, payload = me.get_properties(["gpu"], 0).result[0][1:]
    assert not ok and "gpu" in deserialize(payload).evalue


@pytest.mark.parametrize("targets, wire", [
    ("all", (True, [])), (3, (False, [3])), ([1, 2], (False, [1, 2])), (range(2), (False, [0, 1])),
])
def test_targets_wire_encoding(targets, wire):
    assert targets_to_wire(targets) == wire
    assert targets_from_wire(wire) == ("all" if targets == "all" else list(wire[1]))


@pytest.mark.parametrize("bad", ["some", 1.5, [1, "a"], True])
def test_bad_targets_are_rejected_before_sending(bad):
    with pytest.raises(TypeError, match="targets must be"):
        targets_to_wire(bad)


def test_undelivered_payloads_are_released():
    released: list[tuple[bytes, bool]] = []
    registry = EngineRegistry()
    engines = [FakeEngine() for _ in range(2)]
    for i, e in enumerate(engines):
        registry.register(e, f"u{i}", {})
    me = MultiEngine(registry, release=lambda p, whole: released.append((p, whole)))
    # a refused command releases its payload whole
    me.push(b"B-refused", targets=[0, 9]).addErrback(lambda f: None)
    assert released == [(b"B-refused", True)]
    # a target lost before it ran its share releases that share only
    d = me.push(b"B-shared", targets=[0, 1])
    engines[0].answer(None)
    registry.unregister(1, "killed")
    assert [ok for _, ok, _ in d.result] == [True, False]
    assert released[1:] == [(b"B-shared", False)]
    # a result flushed unread releases the payloads of its replies
    rid = me.pull(["x"], targets=0, block=False).result
    engines[0].answer("value")
    assert me.flush() == 1
    assert released[2:] == [(serialize("value"), True)]
    del rid


def test_kill_waits_for_departures_at_most_a_timeout():
    registry = EngineRegistry()
    ids = [registry.register(FakeEngine(f"uuid{k}"), f"uuid{k}", {}) for k in range(3)]
    clock = Clock()
    fired: list[int] = []
    departures = _Departures(registry, ids[:2], clock, KILL_TIMEOUT)
    for engine_id, d in departures.deferreds.items():
        d.addCallback(lambda _, i=engine_id: fired.append(i))
    registry.unregister(ids[0])
    registry.unregister(ids[2])  # not waited for
    assert fired == [0]
    clock.advance(KILL_TIMEOUT - 0.1)
    assert fired == [0]
    clock.advance(0.1)
    assert fired == [0, 1] and not departures.watching
    registry.unregister(ids[1])  # no longer watched: nothing happens
    assert fired == [0, 1]


def test_the_parallel_services_provide_their_interfaces():
    registry = EngineRegistry()
    registry.register(FakeEngine(), "u", {})
    hub = Hub(MemoryStore(), 7)
    tasks = TaskController(registry, clock=Clock(), hub=hub)
    service = ParallelService(tasks, registry, hub, MultiEngine(registry))
    verifyObject(IHub, hub)
    verifyObject(IParallel, service)
    session = service.session()
    verifyObject(IParallelSession, session)
    session.close()


def _remote_methods(cls) -> dict[str, object]:
    return {name[len("remote_"):]: getattr(cls, name) for name in dir(cls)
            if name.startswith("remote_")}


@pytest.mark.parametrize("adapter", [FoolscapParallel, FoolscapParallelSession])
def test_every_remote_method_of_the_parallel_adapters_is_declared(adapter):
    methods = _remote_methods(adapter)
    assert sorted(methods) == sorted(RIParallel.names())  # none undeclared, none missing
    for name, method in methods.items():
        parameters = list(inspect.signature(method).parameters.values())[1:]  # not self
        if [p.kind for p in parameters] == [inspect.Parameter.VAR_POSITIONAL]:
            continue  # refuses whatever it is given (a session-only call)
        # foolscap hands the arguments over by the names the interface gives them
        assert [p.name for p in parameters] == RIParallel[name].argumentNames, name


def test_the_methods_submit_then_may_call_are_declared():
    assert FOLLOWERS <= set(RIParallel.names())
    assert RIParallel.__remote_name__ == "plait.RIParallel"


def test_an_engine_that_joins_again_replaces_its_old_registration():
    """An engine back after a network cut registers anew under its uuid: if the
    controller had not noticed the loss yet, the old registration goes."""
    registry = EngineRegistry()
    first = FakeEngine()
    assert registry.register(first, "same", {}) == 0
    assert registry.register(FakeEngine(), "other", {}) == 1
    assert registry.register(FakeEngine(), "same", {}) == 2
    assert registry.get_ids() == [1, 2] and registry.get_uuid(2) == "same"
