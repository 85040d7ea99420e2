"""Client-side pieces of the Task interface: task objects, results, map chunking,
and the submitter that coalesces ``run`` calls (against a fake controller)."""

from __future__ import annotations

import datetime

import pytest

from plait.kernel import client
from plait.kernel.client import TaskResult
from plait.kernel.client import _submit as _tcsubmit
from plait.kernel.client._submit import FIRST_BLOCK, Submitter
from plait.kernel.client._taskmap import CHUNK_FACTOR, TAIL_FRACTION, chunk_sizes
from plait.wire.errors import PlaitConnectionError, RemoteFailure, TaskSubmissionError
from plait.wire.records import TaskResultRecord
from plait.wire.serialize import serialize
from support import in_reactor as call
from support.fakes import FakeController


# -- task objects ----------------------------------------------------------------------------
def test_string_task_options_by_keyword_or_attribute():
    t = client.StringTask("a = b", pull="a", push={"b": 1}, retries=2, clear_after=True)
    assert (t.expression, t.pull, t.push, t.retries, t.clear_after) == (
        "a = b", "a", {"b": 1}, 2, True)
    assert repr(t) == "StringTask('a = b', pull='a', push={'b': 1}, clear_after=True, retries=2)"
    u = client.StringTask("x = 1")
    u.pull = ["x"]
    u.depend = len
    assert u.pull == ["x"] and u.depend is len and u.push == {} and u.recovery_task is None


def test_map_task():
    t = client.MapTask(divmod, args=(7, 2), kwargs={}, retries=1)
    assert (t.function, t.args, t.kwargs, t.retries) == (divmod, (7, 2), {}, 1)
    assert repr(t) == "MapTask(divmod, args=(7, 2), retries=1)"
    assert client.MapTask(len).args == ()


# -- results --------------------------------------------------------------------------------
def record(**fields) -> TaskResultRecord:
    base = dict(taskid=73, status="succeeded", payload=b"", engineid=1, engine_uuid="u",
                submitted=1_000_000.0, started=1_000_001.0, completed=1_000_003.0,
                attempts=1, seconds=1.5)
    base.update(fields)
    return TaskResultRecord(**base)


def test_result_of_a_string_task():
    tr = TaskResult(record(), {"a": 73})
    assert repr(tr) == "TaskResult[ID:73]:{'a': 73}"
    assert tr.results["a"] == tr.ns.a == 73 and tr.get() == {"a": 73}
    assert tr.engineid == 1 and tr.succeeded and not tr.failed and tr.failure is None
    assert tr.submitted == datetime.datetime.fromtimestamp(1_000_000.0)
    assert tr.completed - tr.submitted == datetime.timedelta(seconds=3)
    assert tr.duration == 1.5
    tr.raise_exception()  # nothing to raise
    with pytest.raises(AttributeError, match="have: \\['a'\\]"):
        tr.ns.b  # noqa: B018
    with pytest.raises(AttributeError, match="read-only"):
        tr.ns.a = 2
    assert dir(tr.ns) == ["a"]


def test_result_of_a_failed_task():
    failure = RemoteFailure.from_exception(KeyError("k"), engine_id=2, method="run_task")
    tr = TaskResult(record(status="failed", engineid=2), failure)
    assert tr.results is None and tr.failed and tr.failure.engine_id == 2
    assert repr(tr) == "TaskResult[ID:73]:failed: KeyError: 'k'"
    with pytest.raises(KeyError):
        tr.raise_exception()
    with pytest.raises(KeyError):
        tr.get()
    with pytest.raises(AttributeError, match="no results"):
        tr.ns  # noqa: B018


# -- map chunks ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 32, 100, 10_000, 1_000_000])
@pytest.mark.parametrize("engines", [1, 2, 4, 16])
def test_chunks_cover_everything_and_shrink(n, engines):
    sizes = chunk_sizes(n, engines)
    assert sum(sizes) == n and all(s >= 1 for s in sizes)
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] <= -(-n // (CHUNK_FACTOR * engines))
    bound = CHUNK_FACTOR * engines * (2 + TAIL_FRACTION // CHUNK_FACTOR)
    assert len(sizes) <= max(bound, 1)


def test_chunk_count_stays_small_for_long_sequences():
    assert len(chunk_sizes(10_000, 2)) < 60
    assert len(chunk_sizes(32, 4)) >= 16  # short uneven work gets fine chunks


def test_fixed_chunksize():
    assert chunk_sizes(10, 2, chunksize=4) == [4, 4, 2]
    with pytest.raises(ValueError, match="chunksize"):
        chunk_sizes(10, 2, chunksize=0)


# -- the submitter ---------------------------------------------------------------------------
def settle() -> None:
    """Let the reactor run what was scheduled from this thread so far."""
    call(lambda: None)


@pytest.fixture
def submitter():
    fake = FakeController()
    sub = call(Submitter, fake)
    call(lambda: [sub.reserve_first()])  # (a list: do not wait for the Deferred)
    assert fake.calls[0][:2] == ("reserve", (FIRST_BLOCK,))
    fake.answer(0, 1000)
    yield sub, fake
    call(sub.close)  # the fake never answers again: keep it out of the exit hook


def test_ids_come_from_the_reserved_block(submitter):
    sub, fake = submitter
    assert [sub.take_id() for _ in range(3)] == [1000, 1001, 1002]
    assert fake.methods() == ["reserve"]


def test_the_next_block_is_reserved_before_the_first_runs_out(submitter):
    sub, fake = submitter
    ids = [sub.take_id() for _ in range(FIRST_BLOCK // 2 + 1)]
    settle()
    assert fake.methods() == ["reserve", "reserve"]
    assert fake.calls[1][1] == (2 * FIRST_BLOCK,)  # blocks grow
    fake.answer(1, 5000)
    rest = [sub.take_id() for _ in range(FIRST_BLOCK - len(ids) + 1)]
    assert rest[-2:] == [1000 + FIRST_BLOCK - 1, 5000]


def test_a_burst_of_submissions_leaves_in_few_messages(submitter):
    sub, fake = submitter
    sub.enqueue(sub.take_id(), b"first")
    settle()
    assert fake.methods() == ["reserve", "submit"]
    for _ in range(10):  # while the first message is unanswered
        sub.enqueue(sub.take_id(), b"more")
    settle()
    assert fake.methods() == ["reserve", "submit"]
    fake.answer(1, [])
    assert fake.methods() == ["reserve", "submit", "submit"]
    assert len(fake.calls[2][1][0]) == 10
    assert sub.messages_sent == 2


def test_send_buffered_sends_at_once(submitter):
    sub, fake = submitter
    sub.enqueue(sub.take_id(), b"a")
    settle()
    sub.enqueue(sub.take_id(), b"b")
    call(sub.send_buffered)  # e.g. before a barrier: never held back
    assert fake.methods() == ["reserve", "submit", "submit"]


def test_refused_and_lost_submissions_are_remembered(submitter):
    sub, fake = submitter
    first = sub.take_id()
    sub.enqueue(first, b"a")
    settle()
    fake.answer(1, [(first, "task id is already in use")])
    error = call(sub.refusal, first)
    assert isinstance(error, TaskSubmissionError) and "already in use" in str(error)
    second = sub.take_id()
    sub.enqueue(second, b"b")
    call(sub.send_buffered)
    fake.fail(2, ConnectionError("gone"))
    assert "may not have reached the controller" in str(call(sub.refusal, second))
    call(sub.forget, None)
    assert call(sub.refusal, second) is None


def test_the_ticker_sends_what_accumulates_then_stops(submitter, monkeypatch):
    monkeypatch.setattr(_tcsubmit, "TICK", 3600)  # the test ticks by hand
    monkeypatch.setattr(_tcsubmit, "BURST", 3600)  # a wake-up after the first: a burst
    sub, fake = submitter
    sub.enqueue(sub.take_id(), b"a")
    settle()
    assert fake.methods() == ["reserve", "submit"]  # a lone task leaves at once
    fake.answer(1, [])
    sub.enqueue(sub.take_id(), b"b")  # a burst: it leaves at once, and the ticker starts
    settle()
    assert fake.methods() == ["reserve", "submit", "submit"]
    fake.answer(2, [])
    sub.enqueue(sub.take_id(), b"c")
    settle()
    assert fake.methods() == ["reserve", "submit", "submit"]  # the ticker runs: no wake-up
    call(sub._tick)
    assert fake.methods() == ["reserve", "submit", "submit", "submit"]
    fake.answer(3, [])
    for _ in range(_tcsubmit.IDLE_TICKS):
        call(sub._tick)
    sub.enqueue(sub.take_id(), b"d")  # the ticker stopped: this wakes the reactor
    settle()
    assert fake.methods() == ["reserve", "submit", "submit", "submit", "submit"]


def test_one_call_at_a_time_starts_no_ticker(submitter, monkeypatch):
    """A blocking loop (each call waits for its answer) wakes the reactor once per
    call anyway: no ticker runs beside it."""
    monkeypatch.setattr(_tcsubmit, "TICK", 3600)
    monkeypatch.setattr(_tcsubmit, "BURST", 0.0)  # (calls farther apart than a burst)
    sub, fake = submitter
    for n in range(1, 4):
        sub.enqueue(sub.take_id(), b"x")
        settle()
        assert fake.methods() == ["reserve"] + ["submit"] * n  # each leaves at once
        assert not sub._ticking
        fake.answer(n, [])


def test_the_next_call_carries_the_buffered_submissions(submitter, monkeypatch):
    monkeypatch.setattr(_tcsubmit, "TICK", 3600)
    monkeypatch.setattr(_tcsubmit, "BURST", 3600)  # (the second starts the ticker)
    sub, fake = submitter
    for n in (1, 2):
        sub.enqueue(sub.take_id(), b"a")
        settle()
        fake.answer(n, [])
    third = sub.take_id()
    sub.enqueue(third, b"b")  # (buffered: the ticker runs)
    [d] = call(lambda: [sub.call_after("get_task_result", third, True)])
    method, args, _ = fake.calls[3]
    assert method == "submit_then" and args == ([(third, b"b")], "get_task_result",
                                                [third, True])
    got: list = []
    call(lambda: [d.addCallback(got.append)])
    fake.answer(3, ([], (True, "the record")))
    assert got == ["the record"]
    [d] = call(lambda: [sub.call_after("spin")])  # nothing buffered: a plain call
    assert fake.calls[4][:2] == ("spin", ())


def test_waiting_for_ids_when_none_are_left():
    fake = FakeController()
    sub = call(Submitter, fake)
    [d] = call(lambda: [sub.wait_for_id()])
    got: list = []
    call(lambda: [d.addCallback(got.append)])
    assert fake.methods() == ["reserve"] and got == []
    fake.answer(0, 7)
    assert got == [7]
    call(sub.close)


def test_payload_helpers_round_trip():
    assert serialize(None)[:1] == b"P"


# -- draining: nothing submitted is lost -------------------------------------------------------
def drained(sub: Submitter) -> list:
    """Start ``sub.drain()``; a list that will hold its outcome (a Failure or None)."""
    out: list = []
    call(lambda: [sub.drain().addBoth(out.append)])
    return out


def test_drain_sends_the_buffer_then_confirms(submitter, monkeypatch):
    monkeypatch.setattr(_tcsubmit, "TICK", 3600)  # nothing leaves by the ticker
    sub, fake = submitter
    sub.enqueue(sub.take_id(), b"a")
    settle()
    sub.enqueue(sub.take_id(), b"b")  # buffered while "a" is unanswered
    out = drained(sub)
    assert fake.methods() == ["reserve", "submit", "submit", "submit"]
    assert [len(args[0]) for _, args, _ in fake.calls[1:]] == [1, 1, 0]  # a, b, then a probe
    fake.answer(1, [])
    fake.answer(2, [])
    assert out == []  # not before the probe is answered
    fake.answer(3, [])
    assert out == [None]
    assert drained(sub) == [None] and len(fake.calls) == 4  # nothing new: no call at all


def test_only_an_answered_submission_confirms_what_was_sent_before_it(submitter):
    """The controller answers a submission once it keeps the tasks where a
    controller started again finds them; other answers prove less."""
    sub, fake = submitter
    sub.enqueue(sub.take_id(), b"a")
    call(sub.send_buffered)
    [d] = call(lambda: [sub.call_after("queue_status", False)])  # behind the submission
    fake.answer(2, {"scheduled": 1})
    out = drained(sub)
    assert out == [] and fake.methods() == ["reserve", "submit", "queue_status", "submit"]
    fake.answer(3, [])  # the probe: it confirms "a" too
    assert out == [None]
    fake.answer(1, [])
    assert drained(sub) == [None] and len(fake.calls) == 4


def test_drain_reports_refused_submissions_once(submitter):
    sub, fake = submitter
    first = sub.take_id()
    sub.enqueue(first, b"a")
    settle()
    fake.answer(1, [(first, "task id 7 is reserved by another client")])
    [failure] = drained(sub)
    assert isinstance(failure.value, TaskSubmissionError)
    assert str(failure.value).startswith("1 task submission(s) failed; the first: task")
    assert "reserved by another client" in str(failure.value)
    assert drained(sub) == [None]  # reported once


def test_drain_fails_when_the_controller_cannot_confirm(submitter):
    sub, fake = submitter
    taskid = sub.take_id()
    sub.enqueue(taskid, b"a")
    settle()
    out = drained(sub)
    gone = PlaitConnectionError("lost the connection to the controller")
    fake.fail(1, gone)
    fake.fail(2, gone)
    assert "could not confirm" in str(out[0].value) and "lost the connection" in str(
        out[0].value)
    assert "may not have reached the controller" in str(call(sub.refusal, taskid))


def test_draining_at_exit_is_bounded_and_says_what_is_unconfirmed(submitter, capfd):
    from twisted.internet.task import Clock

    sub, fake = submitter
    sub.enqueue(sub.take_id(), b"a")
    settle()  # the controller never answers
    clock = Clock()
    out: list = []
    call(lambda: [_tcsubmit.drain_all(timeout=10, clock=clock).addBoth(out.append)])
    assert out == []
    call(clock.advance, 10)
    assert out == [None]
    assert "gave up after 10 s waiting for the controller" in capfd.readouterr().err
    call(sub.close)  # a closed client is not waited for
    out.clear()
    call(lambda: [_tcsubmit.drain_all(timeout=10, clock=clock).addBoth(out.append)])
    assert out == [None]


def test_one_way_sends_a_lost_connection_left_unacknowledged_are_reported_once():
    fake = FakeController()
    sent_one_way: list = []
    sub = call(Submitter, fake, lambda method, *args: sent_one_way.append((method, args)))
    call(lambda: [sub.reserve_first()])
    fake.answer(0, 1000)
    try:
        sub.enqueue(sub.take_id(), b"a")
        call(sub.send_buffered)
        assert [m for m, _ in sent_one_way] == ["submit_one_way"]
        call(sub.connection_lost, "the controller went away")
        out = drained(sub)
        [failure] = out
        assert "not acknowledged" in str(failure.value)
        assert drained(sub) == [None]  # said once
    finally:
        call(sub.close)


def test_nothing_is_unsure_when_every_task_sent_has_its_result():
    fake = FakeController()
    sub = call(Submitter, fake, lambda method, *args: None)
    call(lambda: [sub.reserve_first()])
    fake.answer(0, 1000)
    try:
        sub.enqueue(sub.take_id(), b"a")
        call(sub.send_buffered)
        call(sub.connection_lost, "the controller went away", True)
        assert drained(sub) == [None]
    finally:
        call(sub.close)
