"""The foolscap adapter of the MultiEngine service (``ipcontroller-mec.furl``)."""

from __future__ import annotations

from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from zope.interface import implementer

from plait.adapters._outcome import outcome
from plait.adapters._uploads import OffersUploads
from plait.interfaces.multiengine import IMultiEngine, RIMultiEngine, targets_from_wire


def _adapt(name: str):
    argnames = RIMultiEngine[name].argumentNames

    def remote_method(self: FoolscapMultiEngine, *args: Any, **kwargs: Any) -> defer.Deferred:
        kwargs.update(zip(argnames, args, strict=False))
        if "targets" in kwargs:
            kwargs["targets"] = targets_from_wire(kwargs["targets"])
        if name == "get_properties" and not kwargs.get("keys"):
            kwargs["keys"] = None
        return outcome(defer.maybeDeferred(getattr(self.service, name), **kwargs))

    remote_method.__name__ = f"remote_{name}"
    remote_method.__doc__ = f"Adapt :meth:`IMultiEngine.{name}` onto the wire."
    return remote_method


# mypy-zope looks for the RI methods by name; foolscap calls remote_<name> ones
@implementer(RIMultiEngine)
class FoolscapMultiEngine(OffersUploads, Referenceable):  # type: ignore[misc]
    """Publishes an :class:`IMultiEngine` service as :class:`RIMultiEngine`."""

    def __init__(self, service: IMultiEngine, blobs: Any = None, channels: Any = None):
        self.service = service
        self.blobs = blobs
        self.channels = channels

    for _name in (
        "get_ids", "execute", "setup", "run", "push", "push_each", "pull", "apply", "apply_each",
        "get_result", "keys", "reset", "kill", "send_signal", "clear_queue", "queue_status",
        "set_properties", "get_properties", "has_properties", "del_properties",
        "clear_properties", "get_pending_result", "flush",
    ):
        locals()[f"remote_{_name}"] = _adapt(_name)
    del _name

    def remote_wait_for_engines(self, n: int) -> defer.Deferred:
        return outcome(self.service.wait_for_engines(n))

    def remote_open_channel(self) -> tuple[bytes, int]:
        """A channel served by a session of its own: the client's pending
        results are kept apart from other clients' and dropped when it goes."""
        session = FoolscapMultiEngine(self.service.session(), self.blobs, self.channels)

        def bound(channel: Any) -> None:
            channel.notifyOnDisconnect(session.service.flush)

        return self.channels.issue(session, on_bound=bound)

