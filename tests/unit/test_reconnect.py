"""A client's calls across links: a question the link's loss cut off is asked
again on the next link, once, and never makes a connection of its own when
the news of the loss came after the next link was made (in-process links)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionLost

from plait.kernel.client._base import AsyncClientBase
from plait.wire.errors import PlaitConnectionError


class Link:
    """One connection's end: records the calls made on it, each a Deferred."""

    def __init__(self, name: str):
        self.name = name
        self.calls: list[tuple[str, tuple, defer.Deferred]] = []
        self._watchers: list[Any] = []

    def callRemote(self, method: str, *args: Any) -> defer.Deferred:  # noqa: N802
        d: defer.Deferred = defer.Deferred()
        self.calls.append((method, args, d))
        return d

    def notifyOnDisconnect(self, watcher: Any, *args: Any) -> None:  # noqa: N802
        self._watchers.append((watcher, args))

    def lose(self) -> None:
        for watcher, args in self._watchers:
            watcher(*args)


class Client(AsyncClientBase):
    furl_name = "test.furl"
    remote_interface = None  # type: ignore[assignment]

    def __init__(self, first: Link, then: list[Link], rejoin_asks: bool = False):
        super().__init__((first, None), "test")
        self._furl = "pb://test"
        self._then = then
        self._rejoin_asks = rejoin_asks
        self.connections = 0

    def _connect_patiently(self) -> defer.Deferred:
        self.connections += 1
        return defer.succeed((self._then.pop(0), None))

    def _rejoined(self) -> Any:
        # (as a session does: a question to the new link before it is of use)
        return self._remote_call("info") if self._rejoin_asks else None


def test_a_loss_heard_of_after_the_next_link_was_made_asks_there_without_connecting():
    a, b = Link("a"), Link("b")
    c = Client(a, [b])
    asked = c._remote_call("records", [7], True)
    a.lose()  # the link goes: the next call connects again
    answered = c._remote_call("info")
    assert c.connections == 1 and [m for m, _, _ in b.calls] == ["info"]
    b.calls[0][2].callback("info")
    assert answered.result == "info"
    a.calls[0][2].errback(ConnectionLost())  # (the news of the first call comes late)
    assert c.connections == 1  # no connection of its own
    assert [m for m, _, _ in b.calls] == ["info", "records"]
    b.calls[1][2].callback(["record"])
    assert asked.result == ["record"]


def test_a_question_cut_off_twice_fails_saying_the_link_was_lost():
    a, b = Link("a"), Link("b")
    c = Client(a, [b])
    asked = c._remote_call("records", [7], True)
    a.calls[0][2].errback(ConnectionLost())  # asked again on a new link
    assert c.connections == 1 and [m for m, _, _ in b.calls] == ["records"]
    b.calls[0][2].errback(ConnectionLost())
    with pytest.raises(PlaitConnectionError, match="during this call"):
        asked.result.raiseException()
    asked.addErrback(lambda f: None)


def test_a_link_lost_while_it_is_set_up_is_dropped_for_the_next_one():
    a, b, c = Link("a"), Link("b"), Link("c")
    cl = Client(a, [b, c], rejoin_asks=True)
    a.lose()
    asked = cl._remote_call("queue_status")  # waits for the link being set up
    assert [m for m, _, _ in b.calls] == ["info"] and not asked.called
    b.lose()  # (the controller died again at once)
    b.calls[0][2].errback(ConnectionLost())
    assert cl.connections == 2 and [m for m, _, _ in c.calls] == ["info"]
    c.calls[0][2].callback("info")  # set up: the call that waited goes there
    assert [m for m, _, _ in c.calls] == ["info", "queue_status"]
    c.calls[1][2].callback("status")
    assert asked.result == "status"


def test_awaited_results_stay_awaited_when_a_question_is_cut_off_and_fail_otherwise():
    from twisted.python.failure import Failure

    from plait.parallel._connection import LOST, ParallelConnection

    conn = ParallelConnection((Link("a"), None), "test")
    conn._furl = "pb://test"
    heard: dict[int, Any] = {}
    for taskid in (1, 2, 3):
        conn.listen(taskid, lambda record: heard.__setitem__(record.taskid, record))
    cut = Failure(PlaitConnectionError("lost the connection to the controller (test) during "
                                       "this call"))
    conn._unanswered(cut, [1])  # asked again once connected again
    assert heard == {} and conn.outstanding() == 3
    gone = Failure(PlaitConnectionError("lost the connection to the controller (test), and "
                                        "could not connect again: refused"))
    conn._unanswered(gone, [1])
    assert heard[1].status == LOST and "could not connect again" in heard[1].stderr
    conn._unanswered(Failure(ValueError("unreadable")), [2])
    assert heard[2].status == LOST and "unreadable" in heard[2].stderr
    conn._closed = True  # (closed: a cut-off question fails too)
    conn._unanswered(cut, [3])
    assert heard[3].status == LOST and conn.outstanding() == 0
