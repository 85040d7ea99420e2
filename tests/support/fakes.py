"""In-process stand-ins for the unit tests: engines that answer when the test says.

The controller's services run for real over these (registry, queues, the
MultiEngine and Task services); only the engines are fakes, and a Twisted
``Clock`` stands in for time.

* :class:`FakeEngine`, an :class:`~plait.interfaces.engine.IEngine`:
  MultiEngine commands wait in ``held`` until :meth:`FakeEngine.answer`
  (or are answered at once, ``hold=False``); each task of a ``run_task``
  batch waits in ``calls`` until :meth:`FakeEngine.reply`,
  :meth:`FakeEngine.fail` or :meth:`FakeEngine.stash`.
* :class:`TaskHarness`: a registry of fake engines and a TaskController.
* :class:`FakeInterpreter`: the engine's interpreter as the task runner uses it.
* :class:`FakeController`: the far end of a TaskClient's submitter.
* :class:`LocalTaskClient`: the calls of a TaskClient that its ``map`` makes,
  answered by running each task here.
* :func:`fired`, :func:`pending`: look at a Deferred without a reactor.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from plait.interfaces.engine import IEngine
from plait.kernel.controller.registry import EngineRegistry
from plait.kernel.controller.task import TaskController
from plait.wire.errors import RemoteFailure
from plait.wire.records import TaskResultRecord
from plait.wire.serialize import deserialize, serialize
from plait.wire.task import StashFetch, TaskBatch, TaskSpec, decode_engine_task, encode_task
from support import in_reactor


def fired(d: defer.Deferred) -> Any:
    """The result of a Deferred that has fired (re-raising a failure)."""
    out: list = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def pending(d: defer.Deferred) -> bool:
    """True while ``d`` has not fired (its result passes through untouched)."""
    out: list = []

    def look(result: Any) -> Any:
        out.append(result)
        return result

    d.addBoth(look)
    return not out


class FakeCommand:
    """One ``run_task`` command received by a FakeEngine: a batch awaiting replies."""

    def __init__(self, size: int):
        self.deferred: defer.Deferred = defer.Deferred()
        self.items: list = [None] * size

    def set(self, index: int, item: tuple) -> None:
        self.items[index] = item
        if all(i is not None for i in self.items):
            self.deferred.callback((True, serialize(self.items)))


def batch_reply(task: bytes, value: Any = None) -> tuple:
    """A reply to the batch command ``task`` where every task returned ``value``."""
    batch = deserialize(task)
    return True, serialize([(True, serialize(value), 0.0, None, None)] * len(batch.payloads))


@implementer(IEngine)
class FakeEngine:
    """An engine whose answers the test gives (see the module documentation).

    ``held`` lists the MultiEngine commands not answered yet as ``(name,
    args, Deferred)``; ``calls`` the tasks not answered yet as ``(task
    name, command, index in the command)``; ``commands`` counts the
    ``run_task`` batches received, ``fetches`` the fetches of stashed values.
    """

    def __init__(self, uuid: str = "fake", hold: bool = True):
        self.id: int | None = None
        self.uuid = uuid
        self.hold = hold
        self.held: list[tuple[str, tuple, defer.Deferred]] = []
        self.calls: list[tuple[str, FakeCommand, int]] = []
        self.commands = 0
        self.fetches: list[tuple[bytes, defer.Deferred]] = []
        self.skipped: list[int] = []  # task ids the controller asked it not to start
        self.signals: list[int] = []
        self.last_words: str | None = None

    # -- MultiEngine commands ------------------------------------------------------
    def _command(self, name: str, *args: Any) -> defer.Deferred:
        if not self.hold:
            return defer.succeed((True, serialize(None)))
        d: defer.Deferred = defer.Deferred()
        self.held.append((name, args, d))
        return d

    def execute(self, lines: str, filename: str | None = None) -> defer.Deferred:
        return self._command("execute", lines)

    def push(self, namespace: bytes) -> defer.Deferred:
        return self._command("push", namespace)

    def pull(self, keys: list[str]) -> defer.Deferred:
        return self._command("pull", keys)

    def apply(self, call: bytes) -> defer.Deferred:
        return self._command("apply", call)

    def get_result(self, i: int | None) -> defer.Deferred:
        return self._command("get_result", i)

    def keys(self) -> defer.Deferred:
        return self._command("keys")

    def reset(self) -> defer.Deferred:
        return self._command("reset")

    def kill(self) -> defer.Deferred:
        return defer.succeed(None)

    def skip_tasks(self, taskids: list[int]) -> defer.Deferred:
        self.skipped.extend(taskids)
        return defer.succeed(None)

    def send_signal(self, signum: int) -> defer.Deferred:
        self.signals.append(signum)
        return defer.succeed(None)

    def answer(self, value: Any = None) -> tuple[str, tuple]:
        """Answer the oldest held command with ``value``; its ``(name, args)``."""
        name, args, d = self.held.pop(0)
        d.callback((True, serialize(value)))
        return name, args

    # -- tasks -------------------------------------------------------------------------
    def run_task(self, task: bytes) -> defer.Deferred:
        batch = deserialize(task)
        if isinstance(batch, StashFetch):
            d: defer.Deferred = defer.Deferred()
            self.fetches.append((batch.key, d))
            return d
        assert isinstance(batch, TaskBatch)
        command = FakeCommand(len(batch.payloads))
        self.commands += 1
        for index, payload in enumerate(batch.payloads):
            self.calls.append((decode_engine_task(payload).expression, command, index))
        return command.deferred

    def names(self) -> list[str]:
        """The names (sources) of the tasks waiting for an answer, in order."""
        return [name for name, _, _ in self.calls]

    def reply(self, value: Any = None, index: int = 0, seconds: float = 0.0) -> None:
        _, command, i = self.calls.pop(index)
        command.set(i, (True, serialize(value), seconds, None, None))

    def stash(self, key: bytes, ok: bool = True, index: int = 0, seconds: float = 0.0) -> None:
        """Answer a task as the engine does for a value too large for the batch reply."""
        _, command, i = self.calls.pop(index)
        command.set(i, (ok, None, seconds, key, None))

    def fail(self, exc: Exception, index: int = 0) -> None:
        failure = RemoteFailure.from_exception(exc, engine_id=self.id)
        _, command, i = self.calls.pop(index)
        command.set(i, (False, serialize(failure), 0.0, None, None))


class TaskHarness:
    """A registry of fake engines (answering MultiEngine commands at once) and a
    TaskController over it, on a Clock."""

    def __init__(self, n: int = 2, scheme: str = "leastload", hwm: int | None = 1, **props: Any):
        self.clock = Clock()
        self.clock.advance(1000)
        self.registry = EngineRegistry()
        self.engines: dict[int, FakeEngine] = {}
        for _ in range(n):
            self.add(**props)
        self.tc = TaskController(
            self.registry, scheme, hwm, clock=self.clock, rng=random.Random(1)
        )

    def add(self, **props: Any) -> FakeEngine:
        engine = FakeEngine(f"uuid-{len(self.engines)}", hold=False)
        engine_id = self.registry.register(engine, engine.uuid, props)
        self.engines[engine_id] = engine
        return engine

    def run(self, name: str = "t", **options: Any) -> int:
        return submit_one(self.tc, encode_task(TaskSpec.string(name, **options)))

    def result(self, taskid: int) -> TaskResultRecord:
        record = fired(self.tc.get_task_result(taskid))
        assert record is not None, f"task {taskid} has not finished"
        return record

    def status(self) -> dict:
        return self.tc.queue_status(verbose=True)

    def placement(self) -> dict[int, list[str]]:
        return {i: e.names() for i, e in self.engines.items() if e.calls}


def submit_one(tc: TaskController, data: bytes) -> int:
    """Submit one encoded task under a fresh reserved id, as a client does."""
    taskid = tc.reserve(1)
    assert tc.submit([(taskid, data)]) == []
    return taskid


def submit_many(harness: TaskHarness, names: list[str], **options: Any) -> list[int]:
    """Submit string tasks named ``names`` in one message; their ids."""
    first = harness.tc.reserve(len(names))
    ids = list(range(first, first + len(names)))
    data = [encode_task(TaskSpec.string(name, **options)) for name in names]
    assert harness.tc.submit(list(zip(ids, data, strict=True))) == []
    return ids


class FakeInterpreter:
    """What the engine's task runner needs of an interpreter, logging each call."""

    def __init__(self):
        self.ns: dict = {}
        self.log: list = []

    def reset(self):
        self.log.append("reset")
        self.ns.clear()

    def push(self, namespace):
        self.log.append("push")
        self.ns.update(namespace)

    def pull(self, keys):
        self.log.append("pull")
        return [self.ns[k] for k in keys]

    def execute(self, lines):
        self.log.append("execute")
        exec(lines, self.ns)
        return {}

    def apply(self, function, args, kwargs):
        self.log.append("apply")
        return function(*args, **kwargs)


class FakeController:
    """The remote end of a task client's Submitter: records its calls; the test
    answers them (in the reactor thread)."""

    def __init__(self):
        self.calls: list[tuple[str, tuple, defer.Deferred]] = []

    def __call__(self, method, *args):
        d: defer.Deferred = defer.Deferred()
        self.calls.append((method, args, d))
        return d

    def answer(self, index, value):
        in_reactor(lambda: self.calls[index][2].callback(value))

    def fail(self, index, exc):
        in_reactor(lambda: self.calls[index][2].errback(exc))

    def methods(self):
        return [m for m, _, _ in self.calls]


class LocalTaskClient:
    """What ``map_tasks`` asks of an AsyncTaskClient, answered by running each
    task at once in this process (after a pickling round trip, as on an engine).

    ``runs`` lists the MapTasks submitted.
    """

    def __init__(self, engines: int = 2):
        self.engines = engines
        self.runs: list[Any] = []
        self._results: dict[int, Any] = {}

    def info(self) -> defer.Deferred:
        return defer.succeed({"engines": self.engines})

    def run(self, task: Any) -> defer.Deferred:
        import cloudpickle

        from plait.kernel.client import TaskResult

        taskid = len(self.runs)
        self.runs.append(task)
        function, args = cloudpickle.loads(cloudpickle.dumps((task.function, task.args)))
        record = TaskResultRecord(taskid=taskid, status="succeeded", payload=b"")
        try:
            value = function(*args)
        except Exception as exc:
            record.status = "failed"
            value = RemoteFailure.from_exception(exc)
        self._results[taskid] = TaskResult(record, value)
        return defer.succeed(taskid)

    def _results_of(self, ids: list[int], block: bool, keep: bool) -> defer.Deferred:
        return defer.succeed([self._results[i] for i in ids])

    def clear(self, ids: Any) -> defer.Deferred:
        return defer.succeed(len(ids))

    def abort(self, taskid: int) -> defer.Deferred:
        return defer.succeed(None)
