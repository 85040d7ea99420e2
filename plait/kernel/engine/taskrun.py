"""The engine side of the Task service: running a batch of tasks.

The controller sends an engine a :class:`~plait.wire.task.TaskBatch`
(one or more serialized engine parts) through ``run_task``; the engine's
interpreter hands it to :func:`run_batch`, in the engine's main thread.
The tasks run one after another, each timed and isolated: a task that
raises (even SystemExit or KeyboardInterrupt) fails alone and the next one
runs.  The answer is the batch reply, one ``(ok, payload, seconds, stash)``
entry per task:

* ``ok`` True: ``payload`` is the task's value, serialized (what a reply
  to a single command would carry); ``ok`` False: a serialized
  :class:`~plait.wire.errors.RemoteFailure`;
* ``seconds``: how long the task ran here (``time.perf_counter``);
* the whole reply must travel inline, so its payloads share a budget of
  :data:`REPLY_BUDGET` bytes.  A payload that does not fit is kept here
  under a random ``stash`` key (its ``payload`` is None) until the
  controller fetches it with a :class:`~plait.wire.task.StashFetch`,
  as a command of its own whose reply can use the bulk data channel.

Stashed values live until fetched (the controller fetches every one it is
told about, again if the fetch is cleared from the engine's queue), or until
the engine exits.

The engine also keeps the inline entries of the last :data:`KEEP_SECONDS`
(:func:`recent_replies`): when its controller dies, the reply it was
sending may be lost with it, and an engine joining the restarted
controller reports them, so that the tasks it ran are not run again.
"""

from __future__ import annotations

import functools
import os
import secrets
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from plait.kernel.engine.interrupts import interrupts
from plait.wire import bulk as _bulk
from plait.wire.errors import SerializationError, TaskAborted, UnmetDependency
from plait.wire.serialize import INLINE_LIMIT, deserialize, is_bulk, pack_framed, serialize_parts
from plait.wire.serialized import Serialized
from plait.wire.task import BatchItem, EngineTask, StashFetch, TaskBatch

#: Bytes of payloads one batch reply may carry; larger ones are stashed.
REPLY_BUDGET = INLINE_LIMIT // 2
#: Characters of output (stdout, stderr, the result's repr) one batch reply may
#: carry with the payloads: the reply must travel inline.  Past it the output is
#: cut, saying so (it reached the client as it was printed, all the same).
OUTPUT_BUDGET = INLINE_LIMIT // 2 - (64 << 10)


def _fit_output(meta: dict | None, room: int) -> tuple[dict | None, int]:
    """``meta`` with its texts cut to ``room`` characters in all; the room left."""
    if not meta:
        return meta, room
    for key in ("stdout", "stderr", "pyout"):
        text = meta.get(key)
        if not isinstance(text, str):
            continue
        if len(text) > room:
            note = (f"\n[plait: {len(text) - max(room - 200, 0):,} more characters of "
                    f"{key} cut: a task's record carries at most {OUTPUT_BUDGET:,}]\n")
            meta[key] = text[:max(room - 200, 0)] + note
        room = max(room - len(meta[key]), 0)
    return meta, room

_stash: dict[bytes, Any] = {}

#: Seconds, entries and bytes of the recent replies kept (see the module documentation).
KEEP_SECONDS = 5.0
KEEP_ENTRIES = 1000
#: (payloads and printed output: the report must fit one registration call)
KEEP_BYTES = 512 << 10
_recent: OrderedDict[int, tuple[float, BatchItem]] = OrderedDict()
_recent_bytes = [0]
_recent_lock = threading.Lock()  # the main thread keeps, the reactor thread takes


def _size(item: BatchItem) -> int:
    meta = item[4] or {}
    return len(item[1] or b"") + sum(len(meta.get(k) or "") for k in ("stdout", "stderr", "pyout"))


def _remember(taskid: int, item: BatchItem) -> None:
    now = time.monotonic()
    with _recent_lock:
        old = _recent.pop(taskid, None)
        if old is not None:
            _recent_bytes[0] -= _size(old[1])
        _recent[taskid] = (now, item)
        _recent_bytes[0] += _size(item)
        while _recent and (len(_recent) > KEEP_ENTRIES or _recent_bytes[0] > KEEP_BYTES
                           or next(iter(_recent.values()))[0] < now - KEEP_SECONDS):
            _, (_, dropped) = _recent.popitem(last=False)
            _recent_bytes[0] -= _size(dropped)


def recent_replies(lost_at: float | None = None) -> list[tuple[int, BatchItem]]:
    """The entries of the tasks this engine finished since :data:`KEEP_SECONDS`
    before ``lost_at`` (a ``time.monotonic()``: when the controller was lost;
    default now), ``[(taskid, entry)]`` oldest first, forgotten here."""
    since = (time.monotonic() if lost_at is None else lost_at) - KEEP_SECONDS
    with _recent_lock:
        found = [(taskid, item) for taskid, (when, item) in _recent.items() if when >= since]
        _recent.clear()
        _recent_bytes[0] = 0
    return found

#: The task kinds of the later generation, run with their output captured.
LATER_KINDS = ("call", "execute")


class Interpreter(Protocol):
    """What :func:`run_on_engine` needs of the engine's interpreter."""

    output_tee: Callable[[str, str], None] | None

    def reset(self) -> None: ...

    def push(self, namespace: dict) -> None: ...

    def pull(self, keys: list[str]) -> list: ...

    def execute(self, lines: str, filename: str | None = None, echo: bool = True) -> dict: ...

    def apply(self, function: Callable[..., Any], args: tuple, kwargs: dict) -> Any: ...

    def failure_payload(self, exc: BaseException, method: str) -> bytes: ...

    def call(self, function: Callable[..., Any], args: tuple, kwargs: dict
             ) -> tuple[Any, str, str]: ...

    last_pyout: str | None


def run_on_engine(interpreter: Interpreter, task: Any) -> Any:
    """Run what the controller sent through ``run_task`` on an engine.

    A :class:`TaskBatch` gives its batch reply and a :class:`StashFetch` the
    value kept back; anything else is a SerializationError.
    """
    if isinstance(task, TaskBatch):
        return run_batch(interpreter, task)
    if isinstance(task, StashFetch):
        return take_stashed(task.key)
    raise SerializationError(f"not a task payload: {type(task).__name__}")


def run_engine_task(interpreter: Interpreter, task: EngineTask) -> Any:
    """Run ``task`` on an engine: clear_before, push, execute or apply, pull, clear_after.

    Returns the ``{name: value}`` dict of ``pull`` for a string task, the
    function's return value for a map task.  Exceptions from user code
    propagate; the namespace is cleared afterwards (``clear_after``) even then.
    """
    if task.clear_before:
        interpreter.reset()
    try:
        if task.push:
            interpreter.push(task.push)
        # (an EngineTask is built by plait.wire.task._engine_part, which checked these)
        if task.kind == "map":
            assert task.function is not None
            return interpreter.apply(task.function, task.args, task.kwargs)
        assert task.expression is not None
        interpreter.execute(task.expression)
        names = list(task.pull)
        return dict(zip(names, interpreter.pull(names), strict=True)) if names else {}
    finally:
        if task.clear_after:
            interpreter.reset()


def run_call(interpreter: Interpreter, task: EngineTask) -> tuple[Any, dict]:
    """Run a ``call`` or ``execute`` task of the later generation: ``(value, meta)``.

    ``meta`` is the batch reply's (see :data:`plait.wire.task.BatchItem`).
    An exception from user code propagates with ``plait_meta`` (its meta,
    output so far included) attached.
    """
    meta: dict[str, Any] = {"started": time.time(), "unmet": False, "pyout": None}
    try:
        if task.kind == "execute":
            assert task.expression is not None
            result = interpreter.execute(task.expression, echo=False)
            value = None
            meta.update(stdout=result["stdout"], stderr=result["stderr"],
                        pyout=interpreter.last_pyout, execution_count=result["number"])
        else:
            assert task.function is not None
            value, meta["stdout"], meta["stderr"] = interpreter.call(
                task.function, task.args, task.kwargs)
    except BaseException as exc:
        meta["completed"] = time.time()
        meta["unmet"] = isinstance(exc, UnmetDependency)
        meta["stdout"], meta["stderr"] = _pop_attribute(exc, "plait_output") or ("", "")
        failed = getattr(exc, "plait_result", None)  # a failed execute's result dict
        if isinstance(failed, dict):
            meta["stdout"], meta["stderr"] = failed.get("stdout", ""), failed.get("stderr", "")
        try:
            vars(exc)["plait_meta"] = meta
        except Exception:  # an exception type without a __dict__
            pass
        raise
    meta["completed"] = time.time()
    return value, meta


#: Characters of a failure's text kept in a batch reply's meta (``error``).
ERROR_TEXT = 2000
_PLAIT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep


def error_text(exc: BaseException) -> str:
    """What a failed task raised, as plain text (its type, message and the last
    frames of its traceback): the controller shows it without unpickling."""
    try:
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if not f.filename.startswith(_PLAIT_DIR)][-3:]  # (the user's frames)
        text = ("".join(traceback.format_list(frames))
                + "".join(traceback.format_exception_only(type(exc), exc)))
    except Exception:
        text = type(exc).__name__
    return text[-ERROR_TEXT:]


def _pop_attribute(exc: BaseException, name: str) -> Any:
    try:
        return exc.__dict__.pop(name, None)
    except Exception:
        return None


def _load(payload: bytes) -> EngineTask:
    task = _bulk.fetch(payload) if is_bulk(payload) else deserialize(payload)
    if not isinstance(task, EngineTask):
        raise TypeError(f"not a task payload: {type(task).__name__}")
    return task


def _keep(obj: Any) -> bytes:
    key = secrets.token_bytes(16)
    _stash[key] = obj
    return key


#: Tasks the controller asked this engine not to start (they were aborted), and
#: how many such ids are remembered at most (an abort may come after the task ran).
_skipped: dict[int, None] = {}
MAX_SKIPPED = 100_000


#: Where the output of a later-generation task goes while it runs: called with
#: ``(taskid, 'stdout' or 'stderr', text)`` (set by the engine process; None: nowhere).
output_sink: Callable[[int, str, str], None] | None = None


def skip(taskids: list[int]) -> None:
    """(Any thread) do not start these tasks of the batches this engine holds, and
    interrupt the one running now if it is one of them (they were aborted)."""
    for taskid in taskids:
        _skipped[taskid] = None
    while len(_skipped) > MAX_SKIPPED:
        del _skipped[next(iter(_skipped))]
    interrupts.abort(list(taskids))


def run_batch(interpreter: Interpreter, batch: TaskBatch) -> list[BatchItem]:
    """Run every task of ``batch`` in order; return the batch reply (never raises).

    A task the controller asked to skip (:func:`skip`) before it started does
    not run: its entry is a TaskAborted failure.
    """
    replies: list[BatchItem] = []
    budget = REPLY_BUDGET
    output_room = OUTPUT_BUDGET
    taskids = batch.taskids or (None,) * len(batch.payloads)
    for payload, taskid in zip(batch.payloads, taskids, strict=True):
        start = time.perf_counter()
        meta: dict | None = None
        if taskid is not None and _skipped and taskid in _skipped:
            del _skipped[taskid]
            aborted = TaskAborted(f"task {taskid} was aborted before it started")
            replies.append((False, interpreter.failure_payload(aborted, "run_task"), 0.0, None,
                            None))
            continue
        try:
            task = _load(payload)
            with interrupts.task(taskid), interrupts.time_limit(getattr(task, "time_limit",
                                                                         None)):
                if task.kind in LATER_KINDS:
                    sink = output_sink
                    if sink is not None and taskid is not None:
                        interpreter.output_tee = functools.partial(sink, taskid)
                    try:
                        value, meta = run_call(interpreter, task)
                    finally:
                        interpreter.output_tee = None
                else:
                    value = run_engine_task(interpreter, task)
            seconds = time.perf_counter() - start
            meta, output_room = _fit_output(meta, output_room)
            head, buffers = serialize_parts(value)
            size = len(head) + sum(memoryview(b).nbytes for b in buffers)
            if size + 64 > budget:
                replies.append((True, None, seconds, _keep(value), meta))
                continue
            data = pack_framed(head, buffers)
            ok = True
        except BaseException as exc:  # a task may not end the engine
            seconds = time.perf_counter() - start
            meta, output_room = _fit_output(_pop_attribute(exc, "plait_meta"), output_room)
            meta = dict(meta or {}, error=error_text(exc))  # (plain text: the status page's)
            ok, data = False, interpreter.failure_payload(exc, "run_task")
            if len(data) > budget:
                replies.append((False, None, seconds, _keep(Serialized(data)), meta))
                continue
        budget -= len(data)
        replies.append((ok, data, seconds, None, meta))
        if taskid is not None:
            _remember(taskid, replies[-1])
    return replies


def take_stashed(key: bytes) -> Any:
    """The value stashed under ``key``, forgotten here; KeyError when unknown."""
    try:
        return _stash.pop(key)
    except (KeyError, TypeError):
        raise KeyError("this engine holds no task value under that key") from None
