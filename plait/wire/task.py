"""The task wire format, shared by the client, the controller and the engines.

A task has two parts that travel together but are opened in different places:

* the **engine part** (:class:`EngineTask`): what runs on an engine.  Either a
  *string* task (Python source in ``expression``) or a *map* task (a
  ``function`` called with ``args`` and ``kwargs``), plus ``push`` (a dict put
  into the namespace first), ``pull`` (names whose values form a string task's
  value), ``clear_before`` and ``clear_after``.  It is serialized with
  :func:`plait.wire.serialize.serialize` into one payload that the
  controller never opens: it hands it unchanged to ``IEngine.run_task``, and
  the engine runs it (:mod:`plait.kernel.engine.taskrun`).
* the **controller part**: ``retries`` (how many times a failed task is
  resubmitted), ``recovery_task`` (another task, run once the retries are
  spent; it may have a recovery task of its own), ``depend`` (a function of
  an engine's properties dict, called in the controller; the task only runs on
  engines where it returns a true value; raising counts as False) and
  ``timeout`` (seconds the task may wait for an engine before it fails with
  :class:`~plait.wire.errors.DependencyTimeout`; 0 or None: forever).

On the wire a task is ``MAGIC`` followed by a pickle of plain containers::

    {"engine": bytes, "retries": int, "depend": bytes | None,
     "timeout": float | None, "recovery": <the same dict> | None}

(``timeout`` may be missing: None.)

The controller reads it with an unpickler that refuses every class and
global (:func:`decode_task`), so user objects are only unpickled where they
must be: ``depend`` in the controller, the engine part on the engine.

Between the controller and an engine, tasks travel in batches: the
controller sends a serialized :class:`TaskBatch` of engine parts (one or
more) through ``IEngine.run_task``; the engine runs them in order
(:mod:`plait.kernel.engine.taskrun`) and answers with one *batch reply*, a list
of ``(ok, payload, seconds, stash)`` per task, that the controller reads
with :func:`decode_batch_reply` (plain data only).  A value too large to
ride in a batch reply stays on the engine under the key ``stash`` (payload
None) until the controller fetches it alone with a :class:`StashFetch`.

The result of a finished task travels back as a :class:`TaskResultRecord`
(:func:`encode_result` / :func:`decode_result`); its ``payload`` is the
engine's serialized value or a serialized
:class:`~plait.wire.errors.RemoteFailure`, still opaque to the controller.

Wire contract: :class:`EngineTask`, :class:`TaskBatch` and
:class:`StashFetch` are pickled by one process and unpickled by another by
their names in this module; keep the names, and keep ``TaskBatch`` and
``StashFetch`` rebuilt from their ``__reduce__``.  The envelope, the batch
reply and the result record are plain data under ``MAGIC`` and
``RECORD_MAGIC``: change their layout only with a new magic.  The
exceptions of the task service are in :mod:`plait.wire.errors`.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from plait.wire.errors import (
    RecoveryLoopError,
    SerializationError,
    TaskSpecError,
)
from plait.wire.serialize import deserialize, serialize

MAGIC = b"T1"
#: ``string`` and ``map``: the kernel generation's StringTask and MapTask;
#: ``call`` and ``execute``: a function call or Python source of the later
#: generation's views, run with their output captured (see :class:`Meta`).
KINDS = ("string", "map", "call", "execute")
#: A recovery chain longer than this is refused (it is almost surely a bug).
MAX_RECOVERY_CHAIN = 256

SCHEDULED = "scheduled"
PENDING = "pending"
SUCCEEDED = "succeeded"
FAILED = "failed"
ABORTED = "aborted"


#: Task ids are ints from 0 to TASK_ID_LIMIT - 1 (they must fit the wire's 8 bytes).
TASK_ID_LIMIT = 1 << 64


def task_ids(taskids: Any) -> list[int]:
    """``taskids`` (one id, or an iterable of ids) as a list of ints.

    TypeError for anything else (a string, a float, a bool...); the ids
    themselves are not checked against any task.
    """
    if isinstance(taskids, int) and not isinstance(taskids, bool):
        return [taskids]
    if isinstance(taskids, (str, bytes)) or not isinstance(taskids, Iterable):
        raise TypeError(f"expected a task id or a list of task ids, not {taskids!r}")
    ids = list(taskids)
    for taskid in ids:
        if isinstance(taskid, bool) or not isinstance(taskid, int):
            raise TypeError(f"a task id is an int (as returned by run), not {taskid!r}")
    return ids


@dataclass(frozen=True)
class GraphDependency:
    """Other tasks a task depends on (``after``: when it may run; ``follow``:
    where: on the engines those ran on).

    With ``all`` it is met once every one of ``ids`` has finished in a way
    that counts (succeeded when ``success``, failed or aborted when
    ``failure``), else once one of them has.
    """

    ids: tuple[int, ...]
    all: bool = True
    success: bool = True
    failure: bool = False

    def plain(self) -> tuple:
        return list(self.ids), self.all, self.success, self.failure


def _graph_dependency(value: Any, what: str) -> GraphDependency | None:
    """A GraphDependency from its plain form (or None); TaskSpecError if malformed."""
    if value is None:
        return None
    if isinstance(value, GraphDependency):
        value = value.plain()
    try:
        ids, every, success, failure = value
        ids = task_ids(ids)
    except (TypeError, ValueError):
        raise TaskSpecError(f"{what} must list task ids, with all/success/failure flags") from None
    if not all(isinstance(flag, bool) for flag in (every, success, failure)):
        raise TaskSpecError(f"the all/success/failure flags of {what} must be booleans")
    if not (success or failure):
        raise TaskSpecError(f"{what} counts neither successes nor failures: it can never be met")
    return GraphDependency(tuple(ids), every, success, failure)


def _check_pinned(targets: tuple[int, ...] | None, envelope: dict) -> None:
    if targets is None or len(targets) != 1:
        raise TaskSpecError("a pinned task names exactly one engine in targets")
    if envelope.get("after") or envelope.get("follow") or envelope.get("recovery"):
        raise TaskSpecError("a pinned task takes no after, follow or recovery task")


def _targets(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        ids = task_ids(value)
    except TypeError:
        raise TaskSpecError(f"targets must be engine ids, not {value!r}") from None
    if not ids:
        raise TaskSpecError("targets names no engine")
    return tuple(ids)


# -- the user-level description ----------------------------------------------
@dataclass(eq=False)
class TaskSpec:
    """Everything a client says about one task (both parts).

    Build one with :meth:`string` or :meth:`map`; attributes may be changed
    afterwards, they are checked by :func:`encode_task`.
    """

    kind: str
    expression: str | None = None
    function: Callable[..., Any] | None = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    push: dict = field(default_factory=dict)
    pull: list[str] | str = field(default_factory=list)
    clear_before: bool = False
    clear_after: bool = False
    retries: int = 0
    recovery_task: TaskSpec | None = None
    depend: Callable[[dict], Any] | None = None
    timeout: float | None = None
    after: GraphDependency | None = None
    follow: GraphDependency | None = None
    targets: tuple[int, ...] | None = None
    pinned: bool = False  # run on the one engine of ``targets`` at once (a direct request)
    time_limit: float | None = None  # seconds it may run on an engine (TaskTimeout past it)

    @classmethod
    def string(cls, expression: str, **options: Any) -> TaskSpec:
        """A task running Python source; its value is ``{name: value}`` of ``pull``."""
        return cls("string", expression=expression, **options)

    @classmethod
    def map(
        cls, function: Callable[..., Any], args: Iterable = (), kwargs: dict | None = None,
        **options: Any,
    ) -> TaskSpec:
        """A task calling ``function(*args, **kwargs)``; its value is the return value."""
        return cls("map", function=function, args=tuple(args), kwargs=dict(kwargs or {}),
                   **options)

    @classmethod
    def call(
        cls, function: Callable[..., Any], args: Iterable = (), kwargs: dict | None = None,
        **options: Any,
    ) -> TaskSpec:
        """A call of the later generation: ``function(*args, **kwargs)``, its output
        captured and its functional dependencies checked on the engine."""
        return cls("call", function=function, args=tuple(args), kwargs=dict(kwargs or {}),
                   **options)

    @classmethod
    def execute(cls, lines: str, **options: Any) -> TaskSpec:
        """Python source of the later generation, its output captured; value None."""
        return cls("execute", expression=lines, **options)


@dataclass(frozen=True)
class EngineTask:
    """The engine part of a task, as the engine receives it."""

    kind: str
    expression: str | None
    function: Callable[..., Any] | None
    args: tuple
    kwargs: dict
    push: dict
    pull: tuple[str, ...]
    clear_before: bool
    clear_after: bool
    time_limit: float | None = None  # seconds of run time; TaskTimeout past them

    def __reduce__(self) -> tuple:
        # (positional: the pickle is smaller and quicker than a dataclass's default)
        return EngineTask, (self.kind, self.expression, self.function, self.args,
                            self.kwargs, self.push, self.pull, self.clear_before,
                            self.clear_after, self.time_limit)


def _names(pull: Any) -> tuple[str, ...]:
    names = (pull,) if isinstance(pull, str) else tuple(pull or ())
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise TaskSpecError(f"pull must be a name or a list of names, not {name!r}")
    return names


def _engine_part(spec: TaskSpec) -> EngineTask:
    """Check ``spec`` and build its engine part; TaskSpecError says what is wrong."""
    if spec.kind not in KINDS:
        raise TaskSpecError(f"task kind must be one of {KINDS}, not {spec.kind!r}")
    pull = _names(spec.pull)
    if spec.kind in ("string", "execute"):
        if not isinstance(spec.expression, str):
            raise TaskSpecError(f"a {spec.kind} task needs source text, not {spec.expression!r}")
        if spec.function is not None or spec.args or spec.kwargs:
            raise TaskSpecError("a string task takes no function, args or kwargs")
    else:
        if not callable(spec.function):
            raise TaskSpecError(f"a {spec.kind} task needs a callable, not {spec.function!r}")
        if spec.expression is not None:
            raise TaskSpecError(f"a {spec.kind} task takes no expression")
        if pull:
            raise TaskSpecError(
                "pull is for string tasks: a map task's value is the function's return value"
            )
        if not isinstance(spec.kwargs, dict):
            raise TaskSpecError(f"kwargs must be a dict, not {type(spec.kwargs).__name__}")
    if not isinstance(spec.push, dict) or not all(
        isinstance(k, str) and k.isidentifier() for k in spec.push
    ):
        raise TaskSpecError("push must be a dict whose keys are Python identifiers")
    return EngineTask(
        kind=spec.kind,
        expression=spec.expression,
        function=spec.function,
        args=tuple(spec.args),
        kwargs=dict(spec.kwargs),
        push=dict(spec.push),
        pull=pull,
        clear_before=bool(spec.clear_before),
        clear_after=bool(spec.clear_after),
        time_limit=_check_time_limit(spec.time_limit),
    )


def _check_time_limit(limit: Any) -> float | None:
    """The run-time limit as a float of seconds, None for none (0 or None)."""
    if limit is None or limit == 0:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not (
        0 < limit < float("inf")
    ):
        raise TaskSpecError(f"time_limit must be a number of seconds > 0, not {limit!r}")
    return float(limit)


def _check_retries(retries: Any) -> int:
    """``retries``, once checked to be an int >= 0."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise TaskSpecError(f"retries must be an int >= 0, not {retries!r}")
    return retries


def _check_timeout(timeout: Any) -> float | None:
    """The timeout as a float of seconds, None for none (0 or None)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
        0 <= timeout < float("inf")
    ):
        raise TaskSpecError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
    return float(timeout) or None


def _chain(first: Any, next_of: Callable[[Any], Any]) -> list[Any]:
    """``first`` and its recovery tasks in order; RecoveryLoopError on a loop."""
    chain: list[Any] = []
    seen: set[int] = set()
    item = first
    while item is not None:
        if id(item) in seen:
            raise RecoveryLoopError(
                f"the recovery_task chain loops: link {len(chain)} is a task already in it"
            )
        if len(chain) >= MAX_RECOVERY_CHAIN:
            raise TaskSpecError(f"the recovery_task chain is longer than {MAX_RECOVERY_CHAIN}")
        seen.add(id(item))
        chain.append(item)
        item = next_of(item)
    return chain


def recovery_chain(spec: TaskSpec) -> list[TaskSpec]:
    """``spec`` and its recovery tasks, in order.

    Raises RecoveryLoopError when the chain loops, TaskSpecError when it is
    too long or a ``recovery_task`` is not a task.
    """

    def next_of(item: Any) -> Any:
        recovery = item.recovery_task
        if recovery is not None and not isinstance(recovery, TaskSpec):
            raise TaskSpecError(f"recovery_task must be a task, not {type(recovery).__name__}")
        return recovery

    return _chain(spec, next_of)


def encode_task(spec: TaskSpec, serialize_engine: Callable[[Any], bytes] = serialize) -> bytes:
    """The wire form of ``spec`` and its recovery chain.

    ``serialize_engine`` turns each engine part into bytes; a client may pass
    one that moves large parts to the bulk data channel.  Raises TaskSpecError
    (bad attribute), RecoveryLoopError (the recovery chain loops) or
    SerializationError (something cannot be pickled).
    """
    envelope: dict | None = None
    for item in reversed(recovery_chain(spec)):
        _check_retries(item.retries)
        if item.depend is not None and not callable(item.depend):
            raise TaskSpecError(f"depend must be callable, not {item.depend!r}")
        envelope = {
            "engine": serialize_engine(_engine_part(item)),
            "retries": item.retries,
            "depend": None if item.depend is None else serialize(item.depend),
            "timeout": _check_timeout(getattr(item, "timeout", None)),
            "recovery": envelope,
        }
        for name in ("after", "follow"):
            dependency = _graph_dependency(getattr(item, name, None), name)
            if dependency is not None:
                envelope[name] = dependency.plain()
        targets = _targets(getattr(item, "targets", None))
        if targets is not None:
            envelope["targets"] = list(targets)
        if getattr(item, "pinned", False):
            _check_pinned(targets, envelope)
            envelope["pinned"] = True
    return MAGIC + pickle.dumps(envelope, protocol=5)


# -- the controller's view ------------------------------------------------------
@dataclass(frozen=True, eq=False, slots=True)  # (slots: a million may be queued)
class ControllerTask:
    """A submitted task as the controller sees it.

    ``payload`` is the opaque engine part; ``depend_key`` is the serialized
    depend (tasks with equal keys have the same depend), ``depend`` the
    function itself; ``timeout`` the seconds it may wait for an engine
    (None: forever).
    """

    payload: bytes
    retries: int = 0
    depend_key: bytes | None = None
    depend: Callable[[dict], Any] | None = None
    recovery: ControllerTask | None = None
    timeout: float | None = None
    after: GraphDependency | None = None
    follow: GraphDependency | None = None
    targets: tuple[int, ...] | None = None
    pinned: bool = False


class _PlainUnpickler(pickle.Unpickler):
    """Reads plain containers only: any class or global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a task envelope may not refer to {module}.{name}")


def _envelope_fields(item: Any) -> tuple[bytes, int, bytes | None, float | None]:
    if not isinstance(item, dict):
        raise TaskSpecError("a task envelope must be a dict")
    payload, retries, depend = item.get("engine"), item.get("retries"), item.get("depend")
    if not isinstance(payload, bytes) or not payload:
        raise TaskSpecError("a task envelope lacks its engine part")
    retries = _check_retries(retries)
    if depend is not None and not isinstance(depend, bytes):
        raise TaskSpecError("depend must be serialized bytes")
    return payload, retries, depend, _check_timeout(item.get("timeout"))


def with_engine_parts(data: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """``data`` (a task's wire form) with each engine part ``p`` of its recovery
    chain replaced by ``change(p)``; ``data`` itself when nothing changed, or
    when it is not a readable task (decoding it says why, later)."""
    if not data.startswith(MAGIC):
        return data
    try:
        envelope = _PlainUnpickler(io.BytesIO(memoryview(data)[len(MAGIC):])).load()
        chain = _chain(envelope,
                       lambda item: item.get("recovery") if isinstance(item, dict) else None)
    except Exception:
        return data
    changed = False
    for item in chain:
        part = item.get("engine") if isinstance(item, dict) else None
        if isinstance(part, bytes):
            new = change(part)
            if new != part:
                item["engine"] = new
                changed = True
    return MAGIC + pickle.dumps(envelope, protocol=5) if changed else data


def decode_task(data: bytes, allow_depend: bool = True) -> ControllerTask:
    """Read a task sent by :func:`encode_task`, deserializing its depend functions.

    Raises TaskSpecError (not a task, or malformed; or, when not
    ``allow_depend``, a task with a depend, which is then never unpickled),
    RecoveryLoopError (a crafted envelope whose recovery chain loops) or
    SerializationError (a depend function cannot be unpickled here).
    """
    if not isinstance(data, bytes) or not data.startswith(MAGIC):
        raise TaskSpecError("not a task: the data lacks the task header")
    try:
        envelope = _PlainUnpickler(io.BytesIO(memoryview(data)[len(MAGIC):])).load()
    except Exception as exc:
        raise TaskSpecError(f"unreadable task envelope: {type(exc).__name__}: {exc}") from exc
    if isinstance(envelope, dict) and envelope.get("recovery") is None:
        chain = [envelope]  # the common case: no recovery tasks
    else:
        chain = _chain(envelope,
                       lambda item: item.get("recovery") if isinstance(item, dict) else None)
    task: ControllerTask | None = None
    for item in reversed(chain):
        payload, retries, depend_key, timeout = _envelope_fields(item)
        depend = None
        if depend_key is not None and not allow_depend:
            raise TaskSpecError(
                "this interface runs no depend function in the controller: use functional "
                "dependencies (require, depend) or graph dependencies (after, follow)"
            )
        if depend_key is not None:
            depend = deserialize(depend_key)
            if not callable(depend):
                raise SerializationError(f"depend is not callable: {depend!r}")
        targets = _targets(item.get("targets"))
        pinned = item.get("pinned", False) is True
        if pinned:
            _check_pinned(targets, item)
        task = ControllerTask(
            payload, retries, depend_key, depend, task, timeout,
            after=_graph_dependency(item.get("after"), "after"),
            follow=_graph_dependency(item.get("follow"), "follow"),
            targets=targets, pinned=pinned,
        )
    if task is None:
        raise TaskSpecError("a task envelope must be a dict")
    return task


# -- between the controller and the engines ------------------------------------
class TaskBatch:
    """Engine parts to run in order on one engine (serialized payloads), and
    their task ids (which the controller may ask the engine to skip)."""

    __slots__ = ("payloads", "taskids")

    def __init__(self, payloads: tuple[bytes, ...], taskids: tuple[int, ...] = ()):
        self.payloads = tuple(payloads)
        self.taskids = tuple(taskids)

    def __reduce__(self) -> tuple:
        return TaskBatch, (self.payloads, self.taskids)

    def payload(self) -> bytes:
        """This batch as an inline payload (the engine reads it with ``deserialize``).

        Plain pickle suffices (the class is importable on the engine), and is
        faster than cloudpickle on this hot path.
        """
        return b"P" + pickle.dumps(self, protocol=5)


class StashFetch:
    """Ask an engine for a value it kept back from a batch reply."""

    __slots__ = ("key",)

    def __init__(self, key: bytes):
        self.key = key

    def __reduce__(self) -> tuple:
        return StashFetch, (self.key,)


#: One task's entry in a batch reply: ``(ok, payload or None, seconds, stash key or
#: None, meta or None)``; ``meta`` (for ``call`` and ``execute`` tasks) is a dict of
#: plain data: ``started`` and ``completed`` (engine clock), ``stdout``, ``stderr``,
#: ``pyout`` (the repr of the value of source ending with an expression, or None),
#: ``execution_count`` (an execute task's command number on its engine) and
#: ``unmet`` (True: a functional dependency was not met on this engine).
BatchItem = tuple[bool, "bytes | None", float, "bytes | None", "dict | None"]
META_KEYS = frozenset({"started", "completed", "stdout", "stderr", "pyout", "unmet",
                       "execution_count", "error"})


def decode_batch_reply(payload: bytes, n: int) -> list[BatchItem]:
    """The ``n`` entries of a batch reply, read as plain data.

    Raises TaskSpecError when the payload is not a batch reply of ``n``
    well-formed entries (it is never unpickled beyond plain containers).
    """
    if not isinstance(payload, bytes) or payload[:1] != b"P":
        raise TaskSpecError("the engine's batch reply is not an inline pickle")
    try:
        items = _PlainUnpickler(io.BytesIO(memoryview(payload)[1:])).load()
    except Exception as exc:
        raise TaskSpecError(f"unreadable batch reply: {type(exc).__name__}: {exc}") from exc
    if not isinstance(items, list) or len(items) != n:
        raise TaskSpecError(f"a batch reply must list {n} results")
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 5 and isinstance(item[0], bool)
                and isinstance(item[1], (bytes, type(None)))
                and isinstance(item[2], (int, float))
                and isinstance(item[3], (bytes, type(None)))
                and (item[1] is None) != (item[3] is None)
                and (item[4] is None or (isinstance(item[4], dict)
                                         and set(item[4]) <= META_KEYS))):
            raise TaskSpecError(f"malformed batch reply entry {item!r:.80}")
    return items


def decode_engine_task(payload: bytes) -> EngineTask:
    """The engine part from an inline payload (bulk ones are fetched by the caller)."""
    task = deserialize(payload)
    if not isinstance(task, EngineTask):
        raise SerializationError(f"not a task payload: {type(task).__name__}")
    return task
