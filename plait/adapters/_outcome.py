"""How every adapter answers: an outcome ``(ok, value)``."""

from __future__ import annotations

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
