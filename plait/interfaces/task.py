"""The Task service: load-balanced, fault-tolerant task farming.

Clients submit tasks (:mod:`plait.kernel._taskspec`) without naming engines;
the controller's :class:`ITaskController` queues them, an :class:`IScheduler`
picks an engine for each, and the task runs through that engine's
:class:`~plait.interfaces.engine.IEngineQueue`, beside the commands of the
MultiEngine interface.

Every task ends in exactly one of three states: ``succeeded``, ``failed``
or ``aborted``.  Before that it is ``scheduled`` (waiting for an engine) or
``pending`` (handed to an engine).  Results are kept until cleared.
"""

from __future__ import annotations

from foolscap.api import RemoteInterface
from foolscap.schema import (
    Any,
    BooleanConstraint,
    IntegerConstraint,
    ListOf,
    Optional,
    TupleOf,
    UnicodeConstraint,
)
from zope.interface import Attribute, Interface

from plait.interfaces.engine import WIRE_BYTES, Address, Token

#: Most task ids one :meth:`ITaskController.reserve` call may take.
MAX_RESERVE = 1 << 20

TaskId = IntegerConstraint(maxBytes=8)
TaskIds = ListOf(TaskId, maxLength=10_000_000)
FlagOff = Optional(BooleanConstraint(), False)  # an argument that may be left out
#: ``[(taskid, encoded task), ...]`` as :meth:`RITaskController.submit` takes them.
Submissions = ListOf(TupleOf(TaskId, WIRE_BYTES), maxLength=1_000_000)
Outcome = TupleOf(BooleanConstraint(), Any())


class ITaskController(Interface):
    """The controller-side task service (local, Twisted code).

    Task ids are ints.  :meth:`run` issues the next one; a client that wants
    to give ids out before the controller answers reserves blocks of them
    with :meth:`reserve` and submits tasks under those ids with
    :meth:`submit`.  Either way ids grow with submission order, and tasks are
    started oldest id first.  Methods that name an unknown id (never issued,
    or cleared) fail with :class:`plait.kernel._taskspec.InvalidTaskID`.
    """

    def run(task):
        """Submit ``task`` (bytes from :func:`~plait.kernel._taskspec.encode_task`).

        Returns the new task id at once (an int, not a Deferred).  Raises
        TaskSpecError / RecoveryLoopError / SerializationError when the task
        is malformed, its recovery chain loops, or its depend cannot be read.
        """

    def reserve(n):
        """Reserve ``n`` (1 to :data:`MAX_RESERVE`) consecutive task ids for
        :meth:`submit`; returns the first.  ValueError for a bad ``n``."""

    def submit(tasks):
        """Submit ``[(taskid, task bytes), ...]`` under reserved ids.

        Returns the list of ``(taskid, reason)`` for the items refused because
        their id was not reserved or is already used (empty normally).  A task
        whose bytes cannot be decoded is not refused: it is recorded as
        ``failed`` at once, its result carrying the error, so nothing
        submitted is lost.
        """

    def get_task_result(taskid, block=False):
        """A Deferred firing with the task's :class:`TaskResultRecord`.

        When the task is not finished it fires with None, or, if ``block``,
        with the record once the task finishes.  Fails with InvalidTaskID.
        The record stays available until :meth:`clear` forgets it.
        """

    def get_task_results(taskids, block=False):
        """A Deferred firing with the list of records (None for unfinished
        tasks) of ``taskids``; with ``block``, once all are finished.  Fails
        at once with InvalidTaskID if an id is unknown."""

    def barrier(taskids):
        """A Deferred firing with None once every task in ``taskids`` (an id or a
        list) has finished, whatever its outcome.  Fails at once with
        InvalidTaskID if an id is unknown."""

    def abort(taskid):
        """Abort a task; returns None.

        A scheduled task never runs; a pending one runs to its end on its
        engine but its result is discarded.  Either way the task finishes
        now as ``aborted`` and its result carries a TaskAborted failure.
        Raises TaskAlreadyCompleted (an IndexError) when the task has
        finished, InvalidTaskID when it is unknown.
        """

    def queue_status(verbose=False):
        """A dict ``{state: count}`` (``verbose``: ``{state: [ids]}``) over the
        states ``scheduled``, ``pending``, ``succeeded``, ``failed`` and
        ``aborted``; cleared tasks are not counted."""

    def spin():
        """Re-evaluate every waiting depend on every engine, then run a
        scheduling pass; returns None.  Rarely needed: engine arrivals and
        property changes (``set_properties``) start a pass by themselves."""

    def clear(taskids=None):
        """Forget finished tasks (all of them, or those in ``taskids``); returns
        how many were forgotten.  Raises InvalidTaskID for an unknown id and
        ValueError for an unfinished one (nothing is forgotten then)."""

    def info():
        """A dict describing the service: ``scheme`` (str), ``hwm`` (int, or
        None when adaptive), ``engines`` (the number registered now) and
        ``marks`` (``{engine id: current mark}``)."""


class IScheduler(Interface):
    """Chooses the engine for each task, and counts each engine's load.

    The task controller tells it about engines (:meth:`add_engine`,
    :meth:`remove_engine`) and about every task it hands to an engine
    (:meth:`assigned`) and every attempt that ends (:meth:`finished`).  Only
    engines in :meth:`available` (below their high water mark) are offered
    tasks; the controller filters them by each task's constraints and asks
    :meth:`choose` to pick one.  Tasks assigned to one engine in one pass
    travel to it in one message.
    """

    name = Attribute("The scheme's name, e.g. 'leastload'.")
    hwm = Attribute(
        "High water mark: most tasks outstanding on one engine at once "
        "(0: no limit; None: adaptive, per engine, see mark())."
    )

    def add_engine(engine_id):
        """A new engine may receive tasks."""

    def remove_engine(engine_id):
        """Forget an engine; unknown ids are ignored."""

    def available():
        """The set of engine ids below their mark (read-only, live)."""

    def choose(candidates):
        """Pick one engine id from the non-empty collection ``candidates``
        (all of them available)."""

    def assigned(engine_id):
        """A task was handed to ``engine_id``."""

    def finished(engine_id, seconds=None):
        """A task handed to ``engine_id`` ended, after running ``seconds`` on
        it (None: unknown, e.g. it failed there); unknown ids are ignored."""

    def load(engine_id):
        """The number of tasks outstanding on ``engine_id`` (0 if unknown)."""

    def mark(engine_id):
        """The current high water mark of ``engine_id`` (0: no limit)."""


class RITaskController(RemoteInterface):
    """The task service as clients reach it (the ``ipcontroller-tc.furl``).

    Every method answers with an *outcome* ``(ok, value)``, as the
    MultiEngine interface does: ``ok`` False means the controller refused
    the call and ``value`` is a serialized
    :class:`~plait.kernel._errors.RemoteFailure` (so the client raises the
    controller's exception type and message); otherwise ``value`` is the
    result described by :class:`ITaskController` (records encoded with
    :func:`~plait.kernel._taskspec.encode_result`).
    """

    __remote_name__ = "plait.RITaskController"

    def run(task=WIRE_BYTES):
        """Submit an encoded task; value: its id."""
        return Outcome

    def reserve(n=IntegerConstraint(maxBytes=8)):
        """Value: the first of ``n`` reserved task ids."""
        return Outcome

    def submit(tasks=Submissions):
        """Submit tasks under reserved ids; value: ``[(taskid, reason)]`` refused."""
        return Outcome

    def submit_then(tasks=Submissions, method=UnicodeConstraint(maxLength=32),
                    args=ListOf(Any(), maxLength=8)):
        """:meth:`submit` ``tasks``, then call ``method(*args)`` (any method
        below but ``open_upload`` and ``open_channel``), in one message.

        Value: ``(refused, outcome of the method)``.
        """
        return Outcome

    def get_task_result(taskid=TaskId, block=FlagOff):
        """Value: the encoded record, or None if not finished and not ``block``."""
        return Outcome

    def get_task_results(taskids=TaskIds, block=FlagOff):
        """Value: the list of encoded records (None where not finished)."""
        return Outcome

    def barrier(taskids=TaskIds):
        """Value None, once every listed task has finished."""
        return Outcome

    def abort(taskid=TaskId):
        """Abort a scheduled or pending task."""
        return Outcome

    def queue_status(verbose=FlagOff):
        """Value: counts (or id lists) of tasks by state."""
        return Outcome

    def spin():
        """Run a scheduling pass."""
        return Outcome

    def clear(everything=BooleanConstraint(), taskids=TaskIds):
        """Forget finished results (``everything``, else ``taskids``); value: how many.

        (Two arguments because foolscap's ChoiceOf cannot mix None and a list.)
        """
        return Outcome

    def info():
        """Value: ``{'scheme': str, 'hwm': int or None, 'engines': int, 'marks': dict}``."""
        return Outcome

    def open_upload(size=IntegerConstraint(maxBytes=16), readers=IntegerConstraint()):
        """Reserve a blob on the bulk data channel: ``(token, blob_id, address)``."""
        return TupleOf(Token, Token, Address)

    def open_channel():
        """A ticket ``(token, port)`` for a channel carrying these same calls
        (see :mod:`plait.adapters.channel`)."""
        return TupleOf(Token, IntegerConstraint())
