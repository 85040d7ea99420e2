"""Task ids and client sessions in the controller: ids are used once, only by
the connection that reserved them; tasks start in arrival order; what a
departed client reserved or waited for does not stay behind.

In-process: the fake engines of ``test_task_service``, the real registry,
TaskController and adapter.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer

from plait.adapters.task import FoolscapTaskController, FoolscapTaskSession
from plait.interfaces.task import MAX_RESERVE
from plait.kernel.controller.taskids import TaskIds
from plait.wire.serialize import deserialize
from plait.wire.task import TaskSpec, encode_task
from support.fakes import TaskHarness, fired, pending

DATA = encode_task(TaskSpec.string("t"))


def named(name: str) -> bytes:
    return encode_task(TaskSpec.string(name))


# -- the id blocks ----------------------------------------------------------------------------
def test_an_id_is_used_once_and_only_by_its_owner():
    ids = TaskIds()
    alice, bob = object(), object()
    a = ids.reserve(3, alice)
    b = ids.reserve(2, bob)
    assert (a, b, ids.next_id) == (0, 3, 5)
    assert ids.take(a + 1, alice) is None
    assert ids.take(a + 1, alice) == "task id 1 was already used"
    assert ids.take(a + 2, bob) == "task id 2 is reserved by another client"
    assert ids.take(99, alice) == "task id 99 was never reserved"
    assert ids.take(-1, alice) == "task id -1 was never reserved"
    assert ids.take("3", bob) == "task id '3' is not an int"
    assert ids.issue() == 5  # the controller's own (a recovery task): nobody may submit it
    assert "not reserved" in ids.take(5, alice)


def test_a_block_used_up_is_forgotten_and_its_ids_stay_used():
    ids = TaskIds()
    owner = object()
    first = ids.reserve(10, owner)
    for taskid in range(first, first + 10):
        assert ids.take(taskid, owner) is None
    assert ids.open_blocks(owner) == 0
    assert "not reserved (any more)" in ids.take(first, owner)


def test_release_drops_the_unused_ids_of_an_owner_only():
    ids = TaskIds()
    gone, stays = object(), object()
    g1, s1, g2 = ids.reserve(4, gone), ids.reserve(4, stays), ids.reserve(4, gone)
    assert ids.take(g1, gone) is None
    assert ids.release(gone) == 7
    assert ids.open_blocks(gone) == 0 and ids.open_blocks(stays) == 1
    assert "not reserved" in ids.take(g1 + 1, gone) and "not reserved" in ids.take(g2, gone)
    assert ids.take(s1, stays) is None


@pytest.mark.parametrize("n", [0, -1, MAX_RESERVE + 1, True, 2.0])
def test_bad_reservations_are_refused(n):
    with pytest.raises(ValueError, match="reserve"):
        TaskIds().reserve(n, None)


# -- the controller ---------------------------------------------------------------------------
def test_a_cleared_id_is_never_used_again():
    cluster = TaskHarness(n=1)
    first = cluster.tc.reserve(4)
    assert cluster.tc.submit([(first, DATA)]) == []
    cluster.engines[0].reply()
    assert cluster.tc.clear([first]) == 1
    assert cluster.tc.submit([(first, DATA)]) == [(first, f"task id {first} was already used")]
    assert cluster.tc.queue_status()["scheduled"] == 0


def test_ids_reserved_by_another_client_are_refused():
    cluster = TaskHarness(n=1)
    alice, bob = object(), object()
    theirs = cluster.tc.reserve(4, alice)
    cluster.tc.reserve(4, bob)
    refused = cluster.tc.submit([(theirs, DATA)], bob)
    assert refused == [(theirs, f"task id {theirs} is reserved by another client")]
    assert cluster.tc.submit([(theirs, DATA)], alice) == []  # still theirs to use


def test_tasks_start_in_arrival_order_whatever_their_ids():
    cluster = TaskHarness(n=1, hwm=1)
    early_block = cluster.tc.reserve(100, "early")
    late_block = cluster.tc.reserve(100, "late")
    cluster.tc.submit([(late_block, named("busy"))], "late")
    cluster.tc.submit([(late_block + 1, named("first"))], "late")
    cluster.tc.submit([(early_block, named("second"))], "early")  # an older block, later
    engine = cluster.engines[0]
    started = []
    while engine.calls:
        started += engine.names()
        engine.reply()
    assert started == ["busy", "first", "second"]


def test_a_released_owner_cannot_submit_its_leftover_ids():
    cluster = TaskHarness(n=1)
    first = cluster.tc.reserve(8, "gone")
    assert cluster.tc.release("gone") == 8
    [(taskid, reason)] = cluster.tc.submit([(first, DATA)], "gone")
    assert taskid == first and "not reserved" in reason


# -- sessions (the adapter) ---------------------------------------------------------------------
def outcome(d: defer.Deferred):
    """The value of a fired ``(ok, value)`` outcome; the remote error is raised."""
    ok, value = fired(d)
    if not ok:
        raise deserialize(value).exception()
    return value


def adapter(cluster: TaskHarness
            ) -> tuple[FoolscapTaskController, FoolscapTaskSession, FoolscapTaskSession]:
    """The published adapter, and two clients' sessions as their channels see them."""
    published = FoolscapTaskController(cluster.tc)
    return (published, FoolscapTaskSession(cluster.tc.session()),
            FoolscapTaskSession(cluster.tc.session()))


def test_each_session_owns_its_ids():
    cluster = TaskHarness(n=1)
    _, alice, bob = adapter(cluster)
    theirs = outcome(alice.remote_reserve(4))
    refused = outcome(bob.remote_submit([(theirs, DATA)]))
    assert refused == [(theirs, f"task id {theirs} is reserved by another client")]
    assert outcome(alice.remote_submit([(theirs, DATA)])) == []


def test_a_closed_session_frees_its_ids_and_forgets_its_waiting_calls():
    cluster = TaskHarness(n=1, hwm=1)
    _, session, _ = adapter(cluster)
    first = outcome(session.remote_reserve(10))
    outcome(session.remote_submit([(first, named("a")), (first + 1, named("b"))]))
    task = cluster.tc._tasks[first + 1]
    calls = [session.remote_barrier([first, first + 1]) for _ in range(5)]
    calls.append(session.remote_get_task_result(first + 1, True))
    calls.append(session.remote_get_task_results([first + 1], True))
    assert all(pending(d) for d in calls) and len(task.waiters) == 7
    session.service.close()
    assert not task.waiters  # nothing of the departed client is kept
    assert all(fired(d)[0] is False for d in calls)  # answered (to nobody) with an error
    assert cluster.tc._ids.open_blocks(session.service) == 0
    assert outcome(session.remote_end_session()) is None  # twice: nothing happens
    cluster.engines[0].reply()
    cluster.engines[0].reply()
    assert cluster.status()["succeeded"] == [first, first + 1]  # the tasks themselves run


def test_a_barrier_is_one_waiter_whatever_the_number_of_tasks():
    cluster = TaskHarness(n=1, hwm=1)
    ids = [cluster.run(f"t{i}") for i in range(50)]
    d = cluster.tc.barrier(ids + ids)  # duplicates count once
    waiters = {id(w) for i in ids for w in cluster.tc._tasks[i].waiters}
    assert len(waiters) == 1
    while cluster.engines[0].calls:
        assert pending(d)
        cluster.engines[0].reply()
    assert fired(d) is None
    assert all(cluster.tc._tasks[i].waiters is None for i in ids)


def test_a_bad_follower_does_not_lose_the_tasks_submitted_with_it():
    cluster = TaskHarness(n=1)
    _, session, _ = adapter(cluster)
    first = outcome(session.remote_reserve(4))
    cases = [("get_task_result", [2**70]), ("open_channel", []), ("barrier", ["x"])]
    for offset, (method, args) in enumerate(cases):
        refused, (ok, failure) = outcome(
            session.remote_submit_then([(first + offset, DATA)], method, args))
        assert refused == [] and ok is False
        assert deserialize(failure).ename in ("Violation", "ValueError")
    assert cluster.status()["pending"] + cluster.status()["scheduled"] == [
        first, first + 1, first + 2]


def test_sessions_cannot_open_sessions_or_channels():
    cluster = TaskHarness(n=1)
    _, session, _ = adapter(cluster)
    with pytest.raises(RuntimeError, match="session already"):
        session.remote_open_channel()
    with pytest.raises(RuntimeError, match="session already"):
        session.remote_open_session(object())


def test_a_foolscap_session_ends_when_its_client_disconnects():
    class Listener:  # stands for the client's Referenceable, seen from the controller
        def __init__(self):
            self.on_disconnect = []

        def notifyOnDisconnect(self, callback, *args):  # (foolscap's name)
            self.on_disconnect.append(callback)

    cluster = TaskHarness(n=1)
    published, _, _ = adapter(cluster)
    listener = Listener()
    session = published.remote_open_session(listener)
    assert isinstance(session, FoolscapTaskSession)
    outcome(session.remote_reserve(4))
    [disconnected] = listener.on_disconnect
    disconnected()
    assert session.service.closed and cluster.tc._ids.open_blocks(session.service) == 0
    with pytest.raises(TypeError, match="reference"):
        published.remote_open_session("not a reference")


def test_a_client_ends_its_session_itself_but_not_the_published_object():
    cluster = TaskHarness(n=1)
    published, session, _ = adapter(cluster)
    outcome(session.remote_reserve(4))
    assert outcome(session.remote_end_session()) is None
    assert session.service.closed and cluster.tc._ids.open_blocks(session.service) == 0
    with pytest.raises(RuntimeError, match="only a session"):
        outcome(published.remote_end_session())
