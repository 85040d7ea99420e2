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

    def __init__(self, first: Link, then: list[Link]):
        super().__init__((first, None), "test")
        self._furl = "pb://test"
        self._then = then
        self.connections = 0

    def _connect_patiently(self) -> defer.Deferred:
        self.connections += 1
        return defer.succeed((self._then.pop(0), None))


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
