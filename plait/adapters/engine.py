"""The engine side of the wire, in both directions.

* :class:`RemoteEngine` adapts the foolscap reference an engine hands over at
  registration into an :class:`IEngine` for the controller's services.
* :class:`FoolscapEngineRegistrar` is the Referenceable published under the
  engine FURL: it grants registration and nothing else.
"""

from __future__ import annotations

from typing import Any

from foolscap.api import DeadReferenceError, Referenceable
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from plait.adapters._uploads import OffersUploads
from plait.interfaces.engine import IEngine, IEngineRegistry, RIEngineRegistrar, RIEngineSession
from plait.wire.errors import ChannelClosed, EngineError
from plait.wire.serialize import loads_plain


@implementer(IEngine)
class RemoteEngine:
    """An :class:`IEngine` backed by a foolscap RemoteReference to an engine."""

    def __init__(self, remote: Any, uuid: str, control: Any = None):
        self.remote = remote  # commands: the engine's channel, or its foolscap reference
        self.control = control or remote  # foolscap: answered even while user code runs
        self.uuid = uuid
        self.id: int | None = None
        self.last_words: str | None = None

    def _call(self, method: str, *args: Any) -> defer.Deferred:
        d = self.remote.callRemote(method, *args)
        d.addErrback(self._lost, method)
        return d

    def _lost(self, failure: Failure, method: str) -> Failure:
        if failure.check(DeadReferenceError, ConnectionDone, ConnectionLost, ChannelClosed):
            why = f": {self.last_words}" if self.last_words else ""
            raise EngineError(f"engine {self.id} was lost during {method}{why}")
        return failure

    def execute(self, lines: str, filename: str | None = None) -> defer.Deferred:
        return self._call("execute", lines, filename or "")

    def push(self, namespace: bytes) -> defer.Deferred:
        return self._call("push", namespace)

    def pull(self, keys: list[str]) -> defer.Deferred:
        return self._call("pull", keys)

    def apply(self, call: bytes) -> defer.Deferred:
        return self._call("apply", call)

    def get_result(self, i: int | None) -> defer.Deferred:
        return self._call("get_result", i)

    def keys(self) -> defer.Deferred:
        return self._call("keys")

    def reset(self) -> defer.Deferred:
        return self._call("reset")

    def run_task(self, task: bytes) -> defer.Deferred:
        return self._call("run_task", task)

    def skip_tasks(self, taskids: list[int]) -> defer.Deferred:
        d = self.control.callRemote("skip_tasks", list(taskids))
        d.addErrback(lambda f: None)  # gone, or an engine that cannot: the task runs
        return d

    def send_signal(self, signum: int) -> defer.Deferred:
        d = self.control.callRemote("send_signal", int(signum))
        d.addErrback(lambda f: None)  # gone, or an older engine: nothing is interrupted
        return d

    def kill(self) -> defer.Deferred:
        d = self.control.callRemote("kill")
        d.addErrback(lambda f: None)  # the engine may be gone before it answers
        return d


# mypy-zope looks for the RI methods by name; foolscap calls remote_<name> ones
@implementer(RIEngineRegistrar)
class FoolscapEngineRegistrar(Referenceable):  # type: ignore[misc]
    """Published under ``ipcontroller-engine.furl``: engines join here."""

    log = Logger()

    def __init__(self, registry: IEngineRegistry, blobs: Any = None, channels: Any = None):
        self.registry = registry
        self.blobs = blobs
        self.channels = channels
        self._opened: dict[bytes, Any] = {}  # channel token -> channel, until registration

    def remote_open_channel(self) -> tuple[bytes, int]:
        holder: list[bytes] = []

        def bound(channel: Any) -> None:
            self._opened[holder[0]] = channel
            channel.notifyOnDisconnect(self._opened.pop, holder[0], None)

        token, port = self.channels.issue(None, on_bound=bound)
        holder.append(token)
        return token, port

    def remote_register_engine(self, engine: Any, uuid: str, properties: bytes,
                               channel: bytes = b"", engine_id: int | None = None,
                               rejoin: bool = False, ran: bytes = b"", secret: bytes = b"",
                               member: bytes = b"") -> tuple[int, FoolscapEngineSession]:
        props = _plain_properties(properties)
        finished = _ran(ran) if ran else []
        link = self._opened.pop(channel, None) if channel else None
        if channel and link is None:
            raise ValueError("unknown channel token: open the channel before registering")
        proxy = RemoteEngine(link or engine, uuid, control=engine)
        try:
            engine_id = self.registry.register(proxy, uuid, props, engine_id, rejoin,
                                               finished, secret, member)
        except BaseException:
            if link is not None:  # (a refused engine's channel closes with the refusal)
                link.close()
            raise

        def lost(reason: str) -> None:  # (not a later engine that took the id over)
            if engine_id in self.registry and self.registry.get_engine(engine_id) is proxy:
                self.registry.unregister(engine_id, reason)

        engine.notifyOnDisconnect(lost, "disconnected")
        if link is not None:
            link.notifyOnDisconnect(lost, "channel closed")
        return engine_id, FoolscapEngineSession(self.registry, engine_id, self.blobs)


def _ran(data: bytes) -> list[tuple[int, tuple]]:
    """What a joining engine says it finished: ``[(taskid, batch-reply entry)]``."""
    items = loads_plain(data)
    if not isinstance(items, list) or not all(
            isinstance(item, tuple) and len(item) == 2 and type(item[0]) is int
            and isinstance(item[1], tuple) and len(item[1]) == 5 for item in items):
        raise TypeError("ran must be a list of (task id, batch-reply entry)")
    return items


def _plain_properties(data: bytes) -> dict:
    props = loads_plain(data)
    if not isinstance(props, dict):
        raise TypeError(f"engine properties must be a dict, not {type(props).__name__}")
    return props


# mypy-zope looks for the RI methods by name; foolscap calls remote_<name> ones
@implementer(RIEngineSession)
class FoolscapEngineSession(OffersUploads, Referenceable):  # type: ignore[misc]
    """One engine's own link to the controller, handed over at registration."""

    def __init__(self, registry: IEngineRegistry, engine_id: int, blobs: Any):
        self.registry = registry
        self.engine_id = engine_id
        self.blobs = blobs

    def remote_set_properties(self, properties: bytes) -> None:
        self.registry.set_properties(self.engine_id, _plain_properties(properties))

    def remote_task_output(self, chunks: list) -> None:
        self.registry.report_output(self.engine_id, [tuple(chunk) for chunk in chunks])

    def remote_last_words(self, reason: str) -> None:
        self.registry.last_words(self.engine_id, reason)

    def remote_usage(self, pid: int, host: str, rss: int, cpu: float) -> None:
        if self.engine_id in self.registry:  # (a report racing the engine's loss)
            self.registry.report_usage(self.engine_id, pid, host, rss, cpu)

