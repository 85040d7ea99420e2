"""The MultiEngine service: run commands on engines chosen by id.

Each command is put on the queue of every target engine and the answers are
collected in target order as ``(engine_id, ok, payload)``.  Payloads are
opaque bytes here: the service never unpickles user data.  Engine losses and
cleared queues become failure replies for the engines concerned, so one
lost engine never hides the results of the others.

Queue entries are labelled for ``queue_status``: the method name, followed
for ``execute`` and ``run`` by the start of the code or the file name.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from plait.interfaces.engine import IEngine, IEngineRegistry
from plait.interfaces.multiengine import IMultiEngine
from plait.kernel.controller.results import ResultStore
from plait.wire.errors import (
    EngineError,
    EnginesChanged,
    InvalidEngineID,
    PlaitError,
    QueueCleared,
    RemoteFailure,
)
from plait.wire.serialize import loads_plain, serialize

PerEngine = list[tuple[int, bool, bytes]]

#: Seconds ``kill`` waits for a killed engine to leave the registry.
KILL_TIMEOUT = 10.0
_LABEL_CODE = 60


def code_label(method: str, text: str) -> str:
    """A queue label: ``method: <first line of text>`` (shortened)."""
    first = text.lstrip("\n").split("\n", 1)[0]
    if len(first) > _LABEL_CODE or "\n" in text.strip("\n"):
        first = first[:_LABEL_CODE].rstrip() + " ..."
    return f"{method}: {first}"


class _Departures:
    """Deferreds that fire as engines leave a registry, or after ``timeout`` s."""

    def __init__(self, registry: IEngineRegistry, ids: list[int], clock: IReactorTime,
                 timeout: float):
        self.registry = registry
        self.waiting: dict[int, defer.Deferred[None]] = {i: defer.Deferred() for i in ids}
        self.deferreds = dict(self.waiting)
        self.watching = True
        registry.add_observer(self)
        self.timer = clock.callLater(timeout, self.finish)
        for i in list(self.waiting):
            if i not in registry:
                self.engine_removed(i)

    def engine_removed(self, engine_id: int) -> None:
        d = self.waiting.pop(engine_id, None)
        if d is not None:
            d.callback(None)
        if not self.waiting:
            self.finish()

    def finish(self) -> None:
        """Stop watching; fire what still waits."""
        if not self.watching:
            return
        self.watching = False
        self.registry.remove_observer(self)
        if self.timer.active():
            self.timer.cancel()
        waiting, self.waiting = self.waiting, {}
        for d in waiting.values():
            d.callback(None)


def failure_reply(failure: Failure, engine_id: int, method: str) -> tuple[bool, bytes]:
    """A ``(False, payload)`` reply describing ``failure``."""
    info = RemoteFailure.from_exception(failure.value, engine_id=engine_id, method=method)
    info.traceback = failure.getTraceback() if not isinstance(failure.value, PlaitError) else ""
    return False, serialize(info)


def ok_reply(value: Any) -> tuple[bool, bytes]:
    return True, serialize(value)


@implementer(IMultiEngine)
class MultiEngine:
    """Implements :class:`IMultiEngine` over an engine registry."""

    def __init__(self, registry: IEngineRegistry, results: ResultStore | None = None,
                 stop_controller: Callable[[], None] | None = None,
                 clock: IReactorTime | None = None,
                 release: Callable[[bytes, bool], None] | None = None):
        """``release(payload, whole)`` is told of payloads that will not be
        delivered: all of them (``whole``) for a refused command, or one
        target's share when that target's command failed before it ran, so
        that large payloads held elsewhere (the bulk relay) can be freed."""
        self.registry = registry
        self._release = release or (lambda payload, whole: None)
        self.results = results or ResultStore(on_drop=self._drop_replies)
        self._stop_controller = stop_controller
        self._clock = clock
        #: setup code every engine joining from now on runs first (shared by sessions)
        self._setup: list[str] = []
        registry.add_observer(self)

    def _drop_replies(self, value: Any) -> None:
        """A stored result was flushed unread: free the payloads of its replies."""
        if isinstance(value, list):
            for reply in value:
                if isinstance(reply, tuple) and len(reply) == 3 and reply[1]:
                    self._release(reply[2], True)

    # -- helpers ------------------------------------------------------------
    def resolve_targets(self, targets: Any) -> list[int]:
        """Turn ``'all'``, an int or a list of ints into a list of engine ids.

        Raises InvalidEngineID naming the bad id and listing the valid ones.
        """
        ids = self.registry.get_ids()
        if targets == "all" or targets is None:
            return ids
        if isinstance(targets, bool):
            raise InvalidEngineID(f"invalid targets {targets!r}")
        wanted = [targets] if isinstance(targets, int) else list(targets)
        for t in wanted:
            if not isinstance(t, int) or t not in self.registry:
                raise InvalidEngineID(
                    f"no engine with id {t!r}; registered engines: {ids}"
                )
        return wanted

    def _maybe_pending(self, d: defer.Deferred, block: bool) -> defer.Deferred:
        if block:
            return d
        return defer.succeed(self.results.add(d))

    def _on_engines(self, method: str, call: Callable[[IEngine, int], defer.Deferred],
                    targets: Any, block: bool, label: str | None = None,
                    payload: bytes | None = None) -> defer.Deferred:
        try:
            ids = self.resolve_targets(targets)
        except PlaitError:
            if payload is not None:
                self._release(payload, True)
            return defer.fail()
        payloads = dict.fromkeys(ids, payload) if payload is not None else None
        return self._maybe_pending(
            self._gather(method, {i: call for i in ids}, label, payloads), block
        )

    def _gather(self, method: str, calls: dict[int, Callable[[IEngine, int], defer.Deferred]],
                label: str | None = None, payloads: dict[int, bytes] | None = None
                ) -> defer.Deferred:
        ds = []
        for engine_id, call in calls.items():
            d = self.registry.get_queue(engine_id).submit(
                lambda engine, call=call, i=engine_id: call(engine, i), label=label or method
            )
            if payloads is not None:
                d.addErrback(self._undelivered, payloads[engine_id])
            d.addErrback(failure_reply, engine_id, method)
            d.addCallback(lambda reply, i=engine_id: (i, reply[0], reply[1]))
            ds.append(d)
        return defer.gatherResults(ds, consumeErrors=True)

    def _undelivered(self, failure: Failure, payload: bytes) -> Failure:
        if failure.check(EngineError, QueueCleared):
            self._release(payload, False)  # this target will never fetch it
        return failure

    def _on_each(self, method: str, payloads: dict, invoke: Callable[[IEngine, bytes], defer.Deferred],
                 everyone: bool, block: bool) -> defer.Deferred:
        try:
            if everyone and sorted(payloads) != self.registry.get_ids():
                now = self.registry.get_ids()
                raise EnginesChanged(
                    f"{method}: the engines changed (now {now}); nothing was run", now
                )
            self.resolve_targets(list(payloads))
        except PlaitError:
            for payload in payloads.values():
                self._release(payload, True)
            return defer.fail()

        def sending(payload: bytes) -> Callable[[IEngine, int], defer.Deferred]:
            return lambda engine, _i: invoke(engine, payload)

        calls = {i: sending(p) for i, p in payloads.items()}
        return self._maybe_pending(self._gather(method, calls, None, payloads), block)

    def _local(self, method: str, fn: Callable[[int], Any], targets: Any, block: bool
               ) -> defer.Deferred:
        """A command answered by the controller itself, per engine."""
        try:
            ids = self.resolve_targets(targets)
        except PlaitError:
            return defer.fail()
        out: PerEngine = []
        for i in ids:
            try:
                ok, payload = ok_reply(fn(i))
            except Exception:
                ok, payload = failure_reply(Failure(), i, method)
            out.append((i, ok, payload))
        return self._maybe_pending(defer.succeed(out), block)

    # -- IMultiEngine -------------------------------------------------------
    def get_ids(self) -> list[int]:
        return self.registry.get_ids()

    def execute(self, lines: str, targets: Any = "all", block: bool = True) -> defer.Deferred:
        return self._on_engines(
            "execute", lambda e, i: e.execute(lines), targets, block, code_label("execute", lines)
        )

    def setup(self, lines: str, targets: Any = "all", block: bool = True) -> defer.Deferred:
        if not isinstance(lines, str):
            return defer.fail(TypeError(f"setup wants a str of Python code, not "
                                        f"{type(lines).__name__}"))
        self._setup.append(lines)
        return self.execute(lines, targets, block)

    def engine_added(self, engine_id: int) -> None:
        """(Registry observer) A joining engine runs the setup code first: queued now,
        before anything the other services send it."""
        for lines in self._setup:
            d = self._on_engines("setup", functools.partial(_execute, lines), [engine_id],
                                 True, code_label("setup", lines))
            d.addCallbacks(_log_setup_failures, _log_setup_error, errbackArgs=(engine_id,))

    def run(self, lines: str, filename: str, targets: Any = "all", block: bool = True
            ) -> defer.Deferred:
        return self._on_engines(
            "run", lambda e, i: e.execute(lines, filename), targets, block,
            code_label("run", filename),
        )

    def push(self, namespace: bytes, targets: Any = "all", block: bool = True) -> defer.Deferred:
        return self._on_engines("push", lambda e, i: e.push(namespace), targets, block,
                                payload=namespace)

    def push_each(self, payloads: dict[int, bytes], everyone: bool = False, block: bool = True
                  ) -> defer.Deferred:
        return self._on_each("push", payloads, lambda e, p: e.push(p), everyone, block)

    def pull(self, keys: list[str], targets: Any = "all", block: bool = True) -> defer.Deferred:
        return self._on_engines("pull", lambda e, i: e.pull(keys), targets, block)

    def apply(self, call: bytes, targets: Any = "all", block: bool = True) -> defer.Deferred:
        return self._on_engines("apply", lambda e, i: e.apply(call), targets, block, payload=call)

    def apply_each(self, calls: dict[int, bytes], everyone: bool = False, block: bool = True
                   ) -> defer.Deferred:
        return self._on_each("apply", calls, lambda e, p: e.apply(p), everyone, block)

    def get_result(self, i: int | None = None, targets: Any = "all", block: bool = True
                   ) -> defer.Deferred:
        return self._on_engines("get_result", lambda e, _: e.get_result(i), targets, block)

    def keys(self, targets: Any = "all", block: bool = True) -> defer.Deferred:
        return self._on_engines("keys", lambda e, i: e.keys(), targets, block)

    def reset(self, targets: Any = "all", block: bool = True) -> defer.Deferred:
        return self._on_engines("reset", lambda e, i: e.reset(), targets, block)

    def kill(self, controller: bool = False, targets: Any = "all", block: bool = True
             ) -> defer.Deferred:
        try:
            ids = self.resolve_targets(targets)
        except PlaitError:
            return defer.fail()
        departed = self._departures(ids)
        ds = []
        for i in ids:
            d = self.registry.get_engine(i).kill()  # not queued: kill means now
            d.addCallback(lambda _, i=i: departed[i])
            d.addCallbacks(
                lambda _, i=i: (i, *ok_reply(None)),
                lambda f, i=i: (i, *failure_reply(f, i, "kill")),
            )
            ds.append(d)
        d = defer.gatherResults(ds, consumeErrors=True)
        stop = self._stop_controller
        if controller and stop is not None:
            d.addBoth(lambda r: (stop(), r)[1])
        return self._maybe_pending(d, block)

    def send_signal(self, signum: int, targets: Any = "all", block: bool = True
                    ) -> defer.Deferred:
        try:
            ids = self.resolve_targets(targets)
            signum = _signal_number(signum)
        except (PlaitError, ValueError):
            return defer.fail()
        ds = []
        for i in ids:
            d = self.registry.get_engine(i).send_signal(signum)  # not queued: now
            d.addCallback(lambda _, i=i: (i, *ok_reply(None)))
            ds.append(d)
        return self._maybe_pending(defer.gatherResults(ds, consumeErrors=True), block)

    def _departures(self, ids: list[int]) -> dict[int, defer.Deferred]:
        """A Deferred per engine, firing once it left the registry (or on timeout)."""
        clock = self._clock
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        return _Departures(self.registry, ids, clock, KILL_TIMEOUT).deferreds

    def clear_queue(self, targets: Any = "all", block: bool = True) -> defer.Deferred:
        return self._local(
            "clear_queue", lambda i: self.registry.get_queue(i).clear() and None, targets, block
        )

    def queue_status(self, targets: Any = "all", block: bool = True) -> defer.Deferred:
        return self._local(
            "queue_status", lambda i: self.registry.get_queue(i).status(), targets, block
        )

    def set_properties(self, properties: bytes, targets: Any = "all", block: bool = True
                       ) -> defer.Deferred:
        def update(i: int) -> None:
            props = dict(self.registry.get_properties(i))
            props.update(loads_plain(properties))
            self.registry.set_properties(i, props)

        return self._local("set_properties", update, targets, block)

    def get_properties(self, keys: list[str] | None = None, targets: Any = "all",
                       block: bool = True) -> defer.Deferred:
        def get(i: int) -> dict:
            props = self.registry.get_properties(i)
            if keys is None:
                return dict(props)
            missing = [k for k in keys if k not in props]
            if missing:
                raise KeyError(f"engine {i} has no properties {missing}")
            return {k: props[k] for k in keys}

        return self._local("get_properties", get, targets, block)

    def has_properties(self, keys: list[str], targets: Any = "all", block: bool = True
                       ) -> defer.Deferred:
        return self._local(
            "has_properties",
            lambda i: [k in self.registry.get_properties(i) for k in keys],
            targets,
            block,
        )

    def del_properties(self, keys: list[str], targets: Any = "all", block: bool = True
                       ) -> defer.Deferred:
        def delete(i: int) -> None:
            props = dict(self.registry.get_properties(i))
            for k in keys:
                props.pop(k, None)
            self.registry.set_properties(i, props)

        return self._local("del_properties", delete, targets, block)

    def clear_properties(self, targets: Any = "all", block: bool = True) -> defer.Deferred:
        return self._local(
            "clear_properties", lambda i: self.registry.set_properties(i, {}), targets, block
        )

    def get_pending_result(self, result_id: int, block: bool = True) -> defer.Deferred:
        return self.results.get(result_id, block)

    def flush(self) -> int:
        return self.results.flush()

    def wait_for_engines(self, n: int) -> defer.Deferred:
        return self.registry.wait_for_engines(n)

    def session(self) -> MultiEngine:
        view = copy.copy(self)
        view.results = ResultStore(on_drop=view._drop_replies)
        return view


def _signal_number(signum: Any) -> int:
    """``signum`` if it names a signal; ValueError saying it does not otherwise."""
    import signal

    if isinstance(signum, bool) or not isinstance(signum, int):
        raise ValueError(f"a signal is a number (signal.SIGINT), not {signum!r}")
    try:
        return int(signal.Signals(signum))
    except ValueError:
        raise ValueError(f"{signum} is not a signal number") from None


_log = Logger()


def _log_setup_failures(replies: list) -> None:
    for engine_id, ok, _ in replies:
        if not ok:
            _log.warn("the setup code failed on engine {i}", i=engine_id)


def _log_setup_error(failure: Failure, engine_id: int) -> None:
    _log.warn("the setup code could not run on engine {i}: {e}", i=engine_id,
              e=failure.getErrorMessage())


def _execute(lines: str, engine: IEngine, engine_id: int) -> defer.Deferred:
    return engine.execute(lines)
