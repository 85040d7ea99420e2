"""How every adapter answers: an outcome ``(ok, value)``."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from plait.wire.errors import RemoteFailure
from plait.wire.serialize import serialize


def outcome(d: Any) -> defer.Deferred:
    """Turn a result or Deferred into an ``(ok, value)`` outcome.

    A failure becomes ``(False, serialized RemoteFailure)``, so the client
    sees the controller's exception type and message, not a foolscap error.
    """

    def failed(f: Failure) -> tuple[bool, bytes]:
        return False, serialize(RemoteFailure.from_exception(f.value))

    return defer.maybeDeferred(lambda: d).addCallbacks(lambda v: (True, v), failed)


def submit_then(adapter: Any, service: Any, interface: Any, followers: Collection[str],
                tasks: list, method: str, args: list) -> defer.Deferred:
    """The ``submit_then`` of a task adapter: submit ``tasks`` to ``service`` (its
    ``submit_acknowledged``), start ``adapter``'s ``remote_<method>(*args)`` at
    once (calls keep their order; ``method`` one of ``followers``, ``args``
    checked against ``interface``), and fire, once the tasks are kept, with the
    outcome ``(refused, the call's own outcome)``."""
    acknowledged = service.submit_acknowledged([tuple(item) for item in tasks])
    if acknowledged.called and isinstance(acknowledged.result, Failure):
        return outcome(acknowledged)  # (refused as a whole: the follower is not called)
    if method not in followers:
        follower = outcome(defer.fail(ValueError(f"submit_then cannot call {method!r}")))
    else:
        try:
            interface[method].checkAllArgs(tuple(args), {}, True)
            follower = getattr(adapter, f"remote_{method}")(*args)
        except Exception:
            follower = outcome(defer.fail())
    return outcome(defer.gatherResults([acknowledged, follower]).addCallback(tuple))
