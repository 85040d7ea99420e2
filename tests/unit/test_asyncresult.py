"""AsyncResult's logic in-process: results fed as the connection would feed them."""

from __future__ import annotations

import threading

import pytest

from plait.parallel._asyncresult import AsyncMapResult, AsyncResult, new_metadata
from plait.wire.errors import CompositeError, RemoteError, RemoteFailure
from plait.wire.records import TaskResultRecord, msg_id_maker
from plait.wire.serialize import serialize


class FakeClient:
    """What an AsyncResult asks of its Client."""

    def __init__(self):
        self._msg_id = msg_id_maker(7)
        self._results_condition = threading.Condition(threading.RLock())
        self.recorded = []

    def _metadata_for(self, msg, submitted):
        return new_metadata(msg, submitted)

    def _listen(self, taskid, listener):
        pass

    def _record_result(self, msg, value, error, md):
        self.recorded.append((msg, value, error))

    def _hurry(self):
        pass


def ok(taskid, value, engine=0):
    return TaskResultRecord(taskid=taskid, status="succeeded", payload=serialize(value),
                            engineid=engine, submitted=1.0, started=2.0, completed=3.0)


def failed(taskid, exc, engine=0):
    failure = RemoteFailure.from_exception(exc, engine_id=engine)
    return TaskResultRecord(taskid=taskid, status="failed", payload=serialize(failure),
                            engineid=engine, submitted=1.0, started=2.0, completed=3.0)


def test_values_in_order_and_metadata():
    ar = AsyncResult(FakeClient(), [1, 2], "f", listen=False)
    ar._arrived(ok(2, "b", engine=1))
    assert not ar.ready() and ar.progress == 1
    ar._arrived(ok(1, "a"))
    assert ar.get() == ["a", "b"]
    assert ar.engine_id == [0, 1]
    assert ar.metadata[0].status == "ok"


def test_one_failure_among_several_is_a_composite_error():
    ar = AsyncResult(FakeClient(), [1, 2], "f", listen=False)
    ar._arrived(ok(1, "a"))
    ar._arrived(failed(2, ValueError("no"), engine=1))
    with pytest.raises(CompositeError, match="ValueError: no"):
        ar.get()
    values = ar.get(return_exceptions=True)
    assert values[0] == "a" and isinstance(values[1], RemoteError)


def test_a_result_arriving_twice_counts_once():
    client = FakeClient()
    ar = AsyncResult(client, [1], "f", single=True, listen=False)
    ar._arrived(ok(1, "a"))
    ar._arrived(ok(1, "again"))
    assert ar.get() == "a"
    assert len(client.recorded) == 1


def test_wait_never_answers_false_between_the_last_arrival_and_settling():
    """The last result arrives (waiters are woken) a moment before the Future is
    settled: wait() must not report a timeout in between."""
    ar = AsyncResult(FakeClient(), [1], "f", single=True, listen=False)
    release = threading.Event()
    real_finish = ar._finish
    in_finish = threading.Event()

    def slow_finish():
        in_finish.set()
        release.wait(30)
        real_finish()

    ar._finish = slow_finish
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(ar.wait(30)))
    waiter.start()
    while not ar._cond._waiters:  # the waiter is waiting (it cannot be missed: a spin)
        pass
    feeder = threading.Thread(target=ar._arrived, args=(ok(1, "v"),))
    feeder.start()
    assert in_finish.wait(30)
    assert answers == []  # still waiting: not a premature False
    release.set()
    feeder.join(30)
    waiter.join(30)
    assert answers == [True] and ar.get() == "v"


def test_map_results_iterate_in_order_and_unordered():
    ar = AsyncMapResult(FakeClient(), [1, 2], "m", listen=False)
    ar._arrived(ok(2, [3, 4]))
    ar._arrived(ok(1, [1, 2]))
    assert list(ar) == [1, 2, 3, 4]
    unordered = AsyncMapResult(FakeClient(), [1, 2], "m", ordered=False, listen=False)
    unordered._arrived(ok(2, [3, 4]))
    unordered._arrived(ok(1, [1, 2]))
    assert list(unordered) == [3, 4, 1, 2]


def test_split_and_join_follow_arrivals():
    ar = AsyncResult(FakeClient(), [1, 2, 3], "f", listen=False)
    first, second, third = ar.split()
    both = AsyncResult.join(first, third)
    ar._arrived(ok(3, "c"))
    assert third.get() == "c" and not both.ready()
    ar._arrived(ok(1, "a"))
    assert both.get() == ["a", "c"] and not second.ready()


def test_an_empty_result_is_ready_at_once():
    assert AsyncResult(FakeClient(), [], "f", listen=False).get() == []
