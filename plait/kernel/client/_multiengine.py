"""The asynchronous MultiEngine client (the blocking one is derived from it).

Every method marked ``@asynchronous`` returns a Deferred; the blocking
``MultiEngineClient`` has the same methods, blocking.  ``targets`` and
``block`` default to the attributes of the same names; with ``block=False``
the Deferred fires at once with a :class:`PendingResult`.

A command that fails on some engines fails with a :class:`CompositeError`
listing each failure (``[id:method]: Type: message``) and keeping the
values of the engines that succeeded.  Bad arguments (names that are not
str, values that cannot be pickled, a file that does not exist...) fail
before anything is sent.

The methods are spread over a few modules, one concept each: this one has
the engine commands; :mod:`plait.kernel.client._dataparallel` scatter, gather and map;
:mod:`plait.kernel.client._benchmark` the benchmark; :mod:`plait.kernel.client._interactive`
what is written against the public methods (map, mapper, parallel, the
dictionary interface, activate, ``len`` and ``with`` blocks).
"""

from __future__ import annotations

import signal
import tokenize
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads

from plait.interfaces.multiengine import RIMultiEngine, targets_to_wire
from plait.kernel.client._base import (
    AsyncClientBase,
    asynchronous,
    counted,
    decode_replies,
    raise_outcome,
)
from plait.kernel.client._benchmark import BenchmarkMixin
from plait.kernel.client._dataparallel import DataParallelMixin
from plait.kernel.client._display import QueueStatusList, ResultList
from plait.kernel.client._interactive import MultiEngineHelpers
from plait.kernel.client._pending import PendingResult
from plait.kernel.client._progress import Tally
from plait.kernel.engine.shipped import serialized_values
from plait.security import MEC_FURL
from plait.wire import bulk as _bulk
from plait.wire.errors import RemoteFailure, SerializationError, collect_results
from plait.wire.serialize import dumps_plain, serialize
from plait.wire.serialized import Serialized


def per_engine(method: str, shape: Callable[..., Any] = list, with_ids: bool = False
               ) -> Callable[[list], defer.Deferred]:
    """A finisher: decode per-engine replies, raise CompositeError on failures.

    ``shape(values)`` (``shape(ids, values)`` when ``with_ids``) makes the
    user's result of the list of per-engine values.
    """

    def finish(replies: list) -> defer.Deferred:
        def shaped(decoded: list) -> Any:
            for _, ok, value in decoded:
                if not ok and isinstance(value, RemoteFailure):
                    value.method = method  # name what the user called, not the engine step
            values = collect_results(method, decoded)
            return shape([r[0] for r in replies], values) if with_ids else shape(values)

        return decode_replies(replies).addCallback(shaped)

    return finish


def wrap_result_list(result: Any) -> Any:
    """A list of execute/get_result dicts as a :class:`ResultList` (others as they are)."""
    return ResultList(result) if isinstance(result, list) else result


def _queue_status(ids: list[int], statuses: list[dict]) -> QueueStatusList:
    """``[(id, {'queue': [...], 'pending': label or None})]`` from queue statuses.

    The first command sent to an engine is the one running (``pending``);
    a second one already sent waits on the engine and is listed as queued.
    """
    out = QueueStatusList()
    for engine_id, status in zip(ids, statuses, strict=True):
        running = status.get("pending") or []
        if not isinstance(running, list):
            running = [running]
        queue = list(running[1:]) + list(status.get("queue") or [])
        out.append((engine_id, {"queue": queue, "pending": running[0] if running else None}))
    return out


def _names(keys: Any, method: str) -> list[str]:
    names = [keys] if isinstance(keys, str) else keys
    if not isinstance(names, (list, tuple)) or not all(isinstance(k, str) for k in names):
        raise TypeError(f"{method} wants a name (str) or a list of names, got {keys!r}")
    return list(names)


class AsyncMultiEngineClient(DataParallelMixin, BenchmarkMixin, MultiEngineHelpers,
                             AsyncClientBase):
    """Drive the engines of a controller one by one or all together (Twisted API).

    Create one with :meth:`connect` (with no argument, the
    ``ipcontroller-mec.furl`` of the default profile).
    """

    furl_name = MEC_FURL
    remote_interface = RIMultiEngine

    def __init__(self, remote: Any, source: str = ""):
        super().__init__(remote, source)
        self.targets: Any = "all"
        self.block: bool = True
        self._engine_ids: list[int] | None = None  # as last seen: see _dataparallel

    # -- plumbing ----------------------------------------------------------
    def _tb(self, targets: Any, block: bool | None) -> tuple[Any, bool]:
        return (self.targets if targets is None else targets,
                self.block if block is None else block)

    def _per_engine(self, method: str, shape: Callable[..., Any] = list,
                    with_ids: bool = False) -> Callable[[list], defer.Deferred]:
        return per_engine(method, shape, with_ids)

    def _engine_call(self, method: str, *args: Any, targets: Any = None,
                     block: bool | None = None, shape: Callable[..., Any] = list,
                     label: str | None = None, with_ids: bool = False) -> defer.Deferred:
        targets, block = self._tb(targets, block)
        try:
            wire = targets_to_wire(targets)
        except TypeError:
            return defer.fail()
        finish = per_engine(label or method, shape, with_ids)
        return self._call(method, *args, wire, block=block, finish=finish,
                          description=label or method)

    def _outgoing(self, obj: Any, what: str) -> Any:
        """``_bulk.outgoing(obj)``; a SerializationError names the culprit."""
        try:
            return _bulk.outgoing(obj)
        except SerializationError as exc:
            if isinstance(obj, dict):
                for key, value in obj.items():
                    try:
                        serialize(value)
                    except SerializationError as inner:
                        raise SerializationError(
                            f"{what}: cannot send {key!r}: {inner}"
                        ) from None
            raise SerializationError(f"{what}: {exc}") from None

    def _payload(self, obj: Any, readers: Callable[[], Any], what: str = "push"
                 ) -> defer.Deferred:
        """A Deferred with ``(payload bytes, upload Deferred or None)`` for ``obj``."""
        try:
            out = self._outgoing(obj, what)
        except Exception:
            return defer.fail()
        if isinstance(out, bytes):
            return defer.succeed((out, None))

        @defer.inlineCallbacks
        def upload() -> Any:
            n = yield readers()
            token, blob_id, address = yield self._remote_call("open_upload", out.size, n)
            address = tuple(address)
            sending = threads.deferToThread(out.send, address, token)
            return out.descriptor(address, blob_id), sending

        return upload()

    def _count(self, targets: Any) -> defer.Deferred:
        targets, _ = self._tb(targets, None)
        everything, ids = targets_to_wire(targets)
        if everything:
            return self.get_ids().addCallback(len)
        return defer.succeed(len(ids))

    def _push_payload(self, method: str, namespace: dict, targets: Any, block: bool | None,
                      label: str | None = None) -> defer.Deferred:
        @defer.inlineCallbacks
        def run() -> Any:
            payload, sending = yield self._payload(
                namespace, lambda: self._count(targets), label or method
            )
            try:
                result = yield self._engine_call(
                    method, payload, targets=targets, block=block, label=label
                )
            except Exception:
                if sending is not None:  # the controller dropped the upload: ignore its end
                    sending.addErrback(lambda f: None)
                raise
            if sending is not None:
                yield sending
            return result

        return run()

    def _apply(self, label: str, function: Callable, args: tuple, targets: Any,
               block: bool | None, shape: Callable[..., Any] = list) -> defer.Deferred:
        """Call ``function(*args)`` (importable on the engines) on each target."""
        try:
            payload = serialize((function, args, {}))
        except SerializationError:
            return defer.fail()
        return self._engine_call("apply", payload, targets=targets, block=block,
                                 shape=shape, label=label)

    # -- code --------------------------------------------------------------
    @asynchronous
    def get_ids(self) -> defer.Deferred:
        """The ids of the registered engines."""
        return self._call("get_ids", finish=self._remember_ids)

    def _remember_ids(self, ids: list[int]) -> list[int]:
        self._engine_ids = list(ids)
        return ids

    @asynchronous
    def execute(self, lines: str, targets: Any = None, block: bool | None = None
                ) -> defer.Deferred:
        """Run Python source on the targets; a ResultList of per-engine dicts.

        Each dict holds ``id``, ``number`` (the command's number on that
        engine), ``input`` (``raw`` and ``translated`` source), ``stdout`` and
        ``stderr``.
        """
        if not isinstance(lines, str):
            return defer.fail(TypeError(f"execute wants a str of Python code, not {type(lines).__name__}"))
        return self._engine_call("execute", lines, targets=targets, block=block, shape=ResultList)

    @asynchronous
    def run(self, filename: str | Path, targets: Any = None, block: bool | None = None
            ) -> defer.Deferred:
        """Run the Python file ``filename`` (a local file) on the targets.

        The file is read and compiled here first, so a missing file or a
        syntax error fails at once; tracebacks on the engines name the file.
        Returns a ResultList, as :meth:`execute`.
        """
        try:
            path = Path(filename).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"run: there is no file {str(path)!r}")
            with tokenize.open(path) as f:
                source = f.read()
            compile(source, str(path), "exec", dont_inherit=True)
        except Exception:
            return defer.fail()
        return self._engine_call(
            "run", source, str(path), targets=targets, block=block, shape=ResultList
        )

    @asynchronous
    def get_result(self, i: int | None = None, targets: Any = None, block: bool | None = None
                   ) -> defer.Deferred:
        """The result dicts of command number ``i`` (None: the last) as a ResultList."""
        if i is not None and (isinstance(i, bool) or not isinstance(i, int)):
            return defer.fail(TypeError(f"get_result wants a command number (int), not {i!r}"))
        return self._engine_call("get_result", i, targets=targets, block=block, shape=ResultList)

    # -- namespaces ----------------------------------------------------------
    @asynchronous
    def push(self, namespace: dict, targets: Any = None, block: bool | None = None
             ) -> defer.Deferred:
        """Push the names and values of ``namespace`` to the targets: ``[None, ...]``."""
        if not isinstance(namespace, dict):
            return defer.fail(TypeError(f"push wants a dict of names to values, not {type(namespace).__name__}"))
        bad = [k for k in namespace if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            return defer.fail(ValueError(f"push: keys must be valid Python names, got {bad!r}"))
        return self._push_payload("push", namespace, targets, block)

    @asynchronous
    def pull(self, keys: str | list[str] | tuple[str, ...], targets: Any = None,
             block: bool | None = None) -> defer.Deferred:
        """Values of ``keys`` on each target: one key gives ``[v0, v1, ...]``,
        several give ``[[a0, b0], [a1, b1], ...]``."""
        single = isinstance(keys, str)
        names = [keys] if single else list(keys)
        bad = [k for k in names if not isinstance(k, str)]
        if bad:
            return defer.fail(TypeError(f"pull wants names (str), got {bad!r}"))
        shape = (lambda vs: [v[0] for v in vs]) if single else list
        return self._engine_call("pull", names, targets=targets, block=block, shape=shape)

    @asynchronous
    def zip_pull(self, keys: str | list[str] | tuple[str, ...], targets: Any = None,
                 block: bool | None = None) -> defer.Deferred:
        """Pull ``keys`` and group the values by key: ``[(a0, a1, ...), (b0, b1, ...)]``."""
        try:
            names = _names(keys, "zip_pull")
        except TypeError:
            return defer.fail()
        return self._engine_call(
            "pull", names, targets=targets, block=block, label="zip_pull",
            shape=lambda values: list(zip(*values, strict=True)) if values else [],
        )

    @asynchronous
    def push_function(self, namespace: dict, targets: Any = None, block: bool | None = None
                      ) -> defer.Deferred:
        """Push functions (closures too) under the names of ``namespace``.

        Functions defined interactively are re-bound to the engine
        namespace: the names they use are looked up there.
        """
        if not isinstance(namespace, dict):
            return defer.fail(TypeError(f"push_function wants a dict of names to functions, not {type(namespace).__name__}"))
        bad = {k: type(v).__name__ for k, v in namespace.items() if not callable(v)}
        if bad:
            return defer.fail(TypeError(f"push_function pushes functions; not callable: {bad}"))
        return self.push(namespace, targets=targets, block=block)

    @asynchronous
    def pull_function(self, keys: str | list[str], targets: Any = None, block: bool | None = None
                      ) -> defer.Deferred:
        """Pull functions, as :meth:`pull` does values (TypeError for non-functions)."""
        try:
            names = _names(keys, "pull_function")
        except TypeError:
            return defer.fail()
        single = isinstance(keys, str)

        def shape(ids: list[int], values: list) -> list:
            for engine_id, row in zip(ids, values, strict=True):
                for name, value in zip(names, row, strict=True):
                    if not callable(value):
                        raise TypeError(
                            f"pull_function: {name!r} on engine {engine_id} is a "
                            f"{type(value).__name__}, not a function"
                        )
            return [row[0] for row in values] if single else values

        return self._engine_call("pull", names, targets=targets, block=block,
                                 shape=shape, label="pull_function", with_ids=True)

    @asynchronous
    def push_serialized(self, namespace: dict, targets: Any = None, block: bool | None = None
                        ) -> defer.Deferred:
        """Push :class:`Serialized` values (from :meth:`pull_serialized`) under new names.

        The values are not unpickled here: an engine gets the original object.
        """
        if not isinstance(namespace, dict):
            return defer.fail(TypeError(f"push_serialized wants a dict, not {type(namespace).__name__}"))
        bad = {k: type(v).__name__ for k, v in namespace.items() if not isinstance(v, Serialized)}
        if bad:
            return defer.fail(TypeError(f"push_serialized pushes Serialized values; got {bad}"))
        return self.push(namespace, targets=targets, block=block)

    @asynchronous
    def pull_serialized(self, keys: str | list[str], targets: Any = None,
                        block: bool | None = None) -> defer.Deferred:
        """Pull values without unpickling them here: :class:`Serialized` objects
        (one per engine for one key, a list per engine for several)."""
        try:
            names = _names(keys, "pull_serialized")
        except TypeError:
            return defer.fail()
        single = isinstance(keys, str)

        def shape(values: list) -> list:
            rows = [[Serialized(data) for data in row] for row in values]
            return [row[0] for row in rows] if single else rows

        return self._apply("pull_serialized", serialized_values, (names,), targets, block, shape)

    @asynchronous
    def keys(self, targets: Any = None, block: bool | None = None) -> defer.Deferred:
        """The sorted variable names of each target's namespace."""
        return self._engine_call("keys", targets=targets, block=block)

    @asynchronous
    def reset(self, targets: Any = None, block: bool | None = None) -> defer.Deferred:
        """Empty the namespace of each target (command numbers go on)."""
        return self._engine_call("reset", targets=targets, block=block)

    # -- engines and queues -----------------------------------------------------
    @asynchronous
    def kill(self, controller: bool = False, targets: Any = None, block: bool | None = None
             ) -> defer.Deferred:
        """Stop the target engines (and the controller too when ``controller``).

        Not queued behind other commands: an engine exits at once, even in
        the middle of user code, and this returns once the engines have left
        the controller.  What was running or queued on them fails with
        EngineError.
        """
        return self._engine_call("kill", bool(controller), targets=targets, block=block)

    @asynchronous
    def setup(self, lines: str, targets: Any = None, block: bool | None = None
              ) -> defer.Deferred:
        """Declare setup code: run ``lines`` now on the targets (as :meth:`execute`),
        and on every engine that joins from now on before anything else it runs:
        an engine restarted after it died (``restart_engines``), or one added.
        Imports and constants a long computation needs survive a restart so."""
        if not isinstance(lines, str):
            return defer.fail(TypeError(f"setup wants a str of Python code, not {type(lines).__name__}"))
        return self._engine_call("setup", lines, targets=targets, block=block, shape=ResultList)

    @asynchronous
    def interrupt(self, targets: Any = None, block: bool | None = None) -> defer.Deferred:
        """Interrupt the user code running on the targets: a KeyboardInterrupt is
        raised in it, failing that command alone; the engines stay, with their
        namespaces, and run what is queued next.  Not queued behind other
        commands.  An engine running no user code is not disturbed."""
        return self.send_signal(signal.SIGINT, targets=targets, block=block)

    @asynchronous
    def send_signal(self, signum: int, targets: Any = None, block: bool | None = None
                    ) -> defer.Deferred:
        """Deliver the signal ``signum`` to the targets' engine processes, now
        (``signal.SIGINT``: as :meth:`interrupt`).  ValueError for a number that
        is not a signal."""
        return self._engine_call("send_signal", int(signum), targets=targets, block=block)

    @asynchronous
    def clear_queue(self, targets: Any = None, block: bool | None = None) -> defer.Deferred:
        """Drop the commands waiting in the controller's queue of each target."""
        return self._engine_call("clear_queue", targets=targets, block=block)

    @asynchronous
    def queue_status(self, targets: Any = None, block: bool | None = None) -> defer.Deferred:
        """The running and waiting commands of each target: a QueueStatusList."""
        return self._engine_call("queue_status", targets=targets, block=block,
                                 shape=_queue_status, with_ids=True)

    # -- properties ----------------------------------------------------------
    @asynchronous
    def set_properties(self, properties: dict, targets: Any = None, block: bool | None = None
                       ) -> defer.Deferred:
        """Update each target's properties with the dict ``properties``.

        Properties are plain data (None, bools, numbers, str, bytes, and
        lists, tuples, sets and dicts of them): the controller reads them.
        """
        if not isinstance(properties, dict) or not all(isinstance(k, str) for k in properties):
            return defer.fail(TypeError("set_properties wants a dict with str keys"))
        try:
            payload = dumps_plain(properties, "a property value")
        except SerializationError as exc:
            return defer.fail(SerializationError(f"set_properties: {exc}"))
        return self._engine_call("set_properties", payload, targets=targets, block=block)

    @asynchronous
    def get_properties(self, keys: str | list[str] | None = None, targets: Any = None,
                       block: bool | None = None) -> defer.Deferred:
        """Each target's properties as a dict (only ``keys`` when given)."""
        try:
            names = [] if keys is None else _names(keys, "get_properties")
        except TypeError:
            return defer.fail()
        return self._engine_call("get_properties", names, targets=targets, block=block)

    @asynchronous
    def has_properties(self, keys: str | list[str], targets: Any = None,
                       block: bool | None = None) -> defer.Deferred:
        """Whether each target has the properties ``keys``: a bool per target
        for one key, a list of bools per target for several."""
        try:
            names = _names(keys, "has_properties")
        except TypeError:
            return defer.fail()
        shape = (lambda vs: [v[0] for v in vs]) if isinstance(keys, str) else list
        return self._engine_call("has_properties", names, targets=targets, block=block,
                                 shape=shape)

    @asynchronous
    def del_properties(self, keys: str | list[str], targets: Any = None,
                       block: bool | None = None) -> defer.Deferred:
        """Remove the properties ``keys`` (those present) from each target."""
        try:
            names = _names(keys, "del_properties")
        except TypeError:
            return defer.fail()
        return self._engine_call("del_properties", names, targets=targets, block=block)

    @asynchronous
    def clear_properties(self, targets: Any = None, block: bool | None = None
                         ) -> defer.Deferred:
        """Remove every property of each target."""
        return self._engine_call("clear_properties", targets=targets, block=block)

    # -- pending results --------------------------------------------------------
    @asynchronous
    @counted("barrier")
    def barrier(self, pending_results: Any, *, tally: Tally | None = None) -> defer.Deferred:
        """Wait until every PendingResult of ``pending_results`` is ready.

        Their results are then taken from the controller and kept in the
        PendingResults: ``get_result()``/``.r`` return them (or raise their
        exception) without waiting.  barrier itself raises nothing.  With
        ``tally``, it counts the results ready as they come (the blocking
        client's ``progress=``).
        """
        prs = list(pending_results)
        bad = [p for p in prs if not isinstance(p, PendingResult)]
        if bad:
            return defer.fail(TypeError(f"barrier wants PendingResults, got {bad[0]!r}"))
        prs.sort(key=lambda p: (p.result_id is None, p.result_id or 0))
        ds = [p.settled() for p in prs]
        if tally is not None:
            tally.total = len(ds)
            for d in ds:
                d.addCallback(lambda _: tally.add())
        return defer.gatherResults(ds).addCallback(lambda _: None)

    @asynchronous
    def flush(self) -> defer.Deferred:
        """Drop every result the controller keeps for PendingResults not yet
        read (results are dropped anyway once read)."""
        return self._call("flush", finish=lambda _: None)

    clear_pending_results = flush

    @asynchronous
    def get_pending_deferred(self, result_id: int, block: bool = True) -> defer.Deferred:
        """The result stored under ``result_id`` (a PendingResult's ``result_id``).

        A low-level call: ``PendingResult.get_result`` is the usual way.  The
        result is taken from the controller; a command's per-engine values come
        as a list (CompositeError when some failed).  Not ``block`` and not
        ready: ResultNotCompleted.
        """
        if isinstance(result_id, bool) or not isinstance(result_id, int):
            return defer.fail(TypeError(f"a result id is an int, not {result_id!r}"))

        def decoded(value: Any) -> Any:
            if isinstance(value, list) and all(
                isinstance(v, (list, tuple)) and len(v) == 3 for v in value
            ):
                return per_engine("get_pending_deferred")(value)
            return value

        d = self._remote_call("get_pending_result", result_id, bool(block))
        return d.addCallback(raise_outcome).addCallback(decoded)
