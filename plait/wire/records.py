"""What the controller records of a finished task, its wire form, and message ids.

A :class:`TaskResultRecord` travels from the controller to clients encoded
by :func:`encode_result`: ``RECORD_MAGIC`` and a pickle of plain values
(the payload stays opaque bytes), read back with an unpickler that refuses
every class.  New fields go at the end, with defaults.

A task's *message id* (``plait.parallel``'s ``msg_id``) is a UUID string
whose first 64 bits name its controller (a number kept in the profile) and
whose last 64 are the task id: ids of different controllers never
collide, and either end turns one into the other without a table.
"""

from __future__ import annotations

import operator
import pickle
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from plait.wire.errors import RemoteFailure, SerializationError
from plait.wire.serialize import deserialize, loads_plain
from plait.wire.task import SUCCEEDED


@dataclass
class TaskResultRecord:
    """What the controller knows of a finished task.

    ``status`` is ``succeeded``, ``failed`` or ``aborted``.  ``payload`` is the
    serialized value when the task succeeded, else a serialized RemoteFailure
    (the engine's exception, an EngineError, or TaskAborted).  Times are
    seconds since the epoch on the controller's clock: ``submitted`` when
    ``run`` was called, ``started`` when the last attempt was handed to its
    engine (None if it never was), ``completed`` when the task finished.
    ``engineid``/``engine_uuid`` name the engine of the last attempt.
    ``seconds`` is how long the last attempt ran on its engine, measured
    there (None if unknown).  ``failed_on`` lists the engines of failed
    attempts, in order;
    ``recovery_taskid`` is the id of the recovery task submitted when this
    task failed for good; ``recovery_of`` the task this one recovers.  A task
    recovered so has the record of its recovery (as the reference system
    ran the recovery task in its place), its own failure kept in
    ``recovered_from`` (a serialized RemoteFailure).
    For ``call`` and ``execute`` tasks, ``stdout``/``stderr`` hold their
    output, ``engine_started``/``engine_completed`` the engine's clock
    around the call, ``pyout`` the repr of a final expression's value,
    ``execution_count`` an execute task's command number on its engine.
    """

    taskid: int
    status: str
    payload: bytes
    engineid: int | None = None
    engine_uuid: str | None = None
    submitted: float = 0.0
    started: float | None = None
    completed: float = 0.0
    attempts: int = 0
    failed_on: list[int] = field(default_factory=list)
    recovery_taskid: int | None = None
    recovery_of: int | None = None
    seconds: float | None = None
    stdout: str = ""
    stderr: str = ""
    engine_started: float | None = None
    engine_completed: float | None = None
    pyout: str | None = None
    execution_count: int | None = None
    recovered_from: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED

    @property
    def duration(self) -> float:
        """Seconds the last attempt ran on its engine; when unknown, from its
        hand-over to completion (0.0 if it never started)."""
        if self.seconds is not None:
            return self.seconds
        return 0.0 if self.started is None else self.completed - self.started

    def value(self) -> Any:
        """The task's value (an inline payload); SerializationError if it failed."""
        if not self.ok:
            raise SerializationError(f"task {self.taskid} {self.status}: it has no value")
        return deserialize(self.payload)

    def failure(self) -> RemoteFailure | None:
        """The RemoteFailure of a failed or aborted task; None when it succeeded."""
        return None if self.ok else deserialize(self.payload)


_RECORD_FIELDS = tuple(f.name for f in fields(TaskResultRecord))
_record_values = operator.attrgetter(*_RECORD_FIELDS)  # a record's fields, as a tuple


def record_of(row: dict) -> TaskResultRecord:
    """The record of a hub row (see :mod:`plait.kernel.controller.hub`); its
    ``status`` is ``"pending"`` while the task has not finished."""
    return TaskResultRecord(
        taskid=row["id"], status=row.get("status") or "pending", payload=row.get("payload") or b"",
        engineid=row.get("engine_id"), engine_uuid=row.get("engine_uuid"),
        submitted=row.get("submitted") or 0.0, started=row.get("started"),
        completed=row.get("completed") or 0.0, attempts=row.get("attempts") or 0,
        stdout=row.get("stdout") or "", stderr=row.get("stderr") or "",
        engine_started=row.get("engine_started"), engine_completed=row.get("engine_completed"),
        pyout=row.get("pyout"), execution_count=row.get("execution_count"),
    )
RECORD_MAGIC = b"R1"


def encode_result(record: TaskResultRecord) -> bytes:
    """The wire form of ``record``: ``RECORD_MAGIC`` and a pickle of its fields
    (plain values only; the payload stays opaque bytes)."""
    return RECORD_MAGIC + pickle.dumps(_record_values(record), protocol=5)


def decode_result(data: bytes) -> TaskResultRecord:
    """Inverse of :func:`encode_result`; SerializationError for anything else.

    Read with an unpickler that refuses every class and global.
    """
    if not isinstance(data, bytes) or not data.startswith(RECORD_MAGIC):
        raise SerializationError("not a task result record")
    try:
        values = loads_plain(data[len(RECORD_MAGIC):])
        return TaskResultRecord(*values)
    except Exception as exc:
        raise SerializationError(f"unreadable task result record: {exc}") from None


RECORDS_MAGIC = b"RS"


def encode_results(records: list[TaskResultRecord]) -> bytes:
    """Many records in one: ``RECORDS_MAGIC`` and one pickle of their fields
    (cheaper than a pickle each, for the stream of a session's results)."""
    rows = [_record_values(record) for record in records]
    return RECORDS_MAGIC + pickle.dumps(rows, protocol=5)


def decode_results(data: bytes) -> list[TaskResultRecord]:
    """Inverse of :func:`encode_results`, read as :func:`decode_result` reads one."""
    if not isinstance(data, bytes) or not data.startswith(RECORDS_MAGIC):
        raise SerializationError("not a list of task result records")
    try:
        rows = loads_plain(data[len(RECORDS_MAGIC):])
        return [TaskResultRecord(*values) for values in rows]
    except Exception as exc:
        raise SerializationError(f"unreadable task result records: {exc}") from None


# -- message ids ---------------------------------------------------------------------
_LOW = (1 << 64) - 1


def msg_id(prefix: int, taskid: int) -> str:
    """The message id of task ``taskid`` of the controller ``prefix``."""
    return str(uuid.UUID(int=(prefix << 64) | taskid))


def msg_id_maker(prefix: int) -> Callable[[int], str]:
    """A fast :func:`msg_id` for the controller ``prefix`` (the same strings)."""
    head = str(uuid.UUID(int=prefix << 64))[:18]  # the first three groups: the prefix
    low = head + "-0000-"  # ...and the fourth of any id below 2**48

    def make(taskid: int) -> str:
        if 0 <= taskid < 0x1000000000000:
            return low + format(taskid, "012x")
        return f"{head}-{taskid >> 48:04x}-{taskid & 0xFFFFFFFFFFFF:012x}"

    return make


def msg_ids(prefix: int, taskids: list[int]) -> list[str]:
    """The message ids of ``taskids`` (of the controller ``prefix``), as
    :func:`msg_id` makes them; many at once (``db_query`` of a long history)."""
    if taskids and 0 <= min(taskids) and max(taskids) < 0x1000000000000:
        low = str(uuid.UUID(int=prefix << 64))[:18] + "-0000-"
        return [low + "%012x" % t for t in taskids]  # noqa: UP031 (the fastest format)
    return list(map(msg_id_maker(prefix), taskids))


def taskid_of(prefix: int, text: Any) -> int | None:
    """The task id ``text`` names on the controller ``prefix``; None otherwise."""
    try:
        value = uuid.UUID(text).int
    except (TypeError, ValueError, AttributeError):
        return None
    return value & _LOW if value >> 64 == prefix else None
