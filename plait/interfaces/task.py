"""The Task service: load-balanced, fault-tolerant task farming.

Clients submit tasks (:mod:`plait.wire.task`) without naming engines;
the controller's :class:`ITaskController` queues them, an :class:`IScheduler`
picks an engine for each, and the task runs through that engine's
:class:`~plait.interfaces.engine.IEngineQueue`, beside the commands of the
MultiEngine interface.

Every task ends in exactly one of three states: ``succeeded``, ``failed``
or ``aborted``.  Before that it is ``scheduled`` (waiting for an engine) or
``pending`` (handed to an engine).  Results are kept until cleared.

Security: a task's ``depend`` function runs in the controller process.
Whoever holds the tc FURL can therefore run code in the controller, with
its account's rights; guard that FURL as you would the account.

Wire contract: the ``__remote_name__`` of each RemoteInterface here is how
the two ends of a connection recognise it; keep those names.
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

    Task ids are ints, each used once.  A client reserves blocks of them
    with :meth:`reserve`, so that it can give ids out before the controller
    answers, and submits tasks under them with :meth:`submit`.  Both name an
    *owner* (any object; a :meth:`session` is the owner of its client's): an
    id is accepted only from the owner that reserved it, and only once, so
    ids are never reused, even after :meth:`clear`.  :meth:`release` drops
    what an owner reserved and did not use.  Tasks start in the order they
    arrived, whatever their ids.  Methods that name an unknown id (never
    issued, or cleared) fail with
    :class:`plait.wire.errors.InvalidTaskID`.
    """

    def reserve(n, owner=None):
        """Reserve ``n`` (1 to :data:`MAX_RESERVE`) consecutive task ids for
        ``owner``'s :meth:`submit`; returns the first.  ValueError for a bad
        ``n``."""

    def submit(tasks, owner=None, later=False):
        """Submit ``[(taskid, task bytes), ...]`` under ids ``owner`` reserved
        (``later``: tasks of the later API generation, see
        :mod:`plait.interfaces.parallel`).

        Returns the list of ``(taskid, reason)`` for the items refused
        because their id was not reserved by ``owner``, or was already used
        (empty normally).  Nothing else is refused: a task that cannot be
        decoded, or whose depend cannot be evaluated, is recorded as
        ``failed`` at once, its result carrying the error, so nothing
        submitted is lost and one bad task does not affect the others.
        """

    def submit_acknowledged(tasks, owner=None, later=False):
        """:meth:`submit`, and a Deferred firing with its refusals once the tasks
        accepted would survive the controller's death (they are in the hub's
        store, when it keeps one): what a client is told is acknowledged.  When
        the store could not write them, the refusals end with ``(None, why)``:
        they were accepted and run, but would not survive (see
        :func:`plait.kernel.controller.task.acknowledgment`).  Fails only as
        :meth:`submit` raises."""

    def durable():
        """A Deferred firing once every task accepted so far would survive the
        controller's death, with None or with why some may not (see
        ``IHub.durable``); it never fails."""

    def release(owner):
        """``owner`` is gone: drop its reserved and unused ids (they can no
        longer be used by anyone); returns how many were dropped."""

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
        """Abort a task; returns a Deferred firing with None.

        A scheduled task never runs; a pending one does not start on its
        engine if it has not started yet (the Deferred fires once the engine
        was told), else is interrupted there (a TaskAborted in its code).
        Either way the task finishes now as ``aborted`` and its result
        carries a TaskAborted failure.  Raises TaskAlreadyCompleted (an
        IndexError) when the task has finished, InvalidTaskID when it is
        unknown.
        """

    def queue_status(verbose=False):
        """A dict ``{state: count}`` (``verbose``: ``{state: [ids]}``) over the
        states ``scheduled``, ``pending``, ``succeeded``, ``failed`` and
        ``aborted``; cleared tasks are not counted."""

    def spin():
        """Re-evaluate every waiting depend on every engine, then run a
        scheduling pass; returns None.  Rarely needed: engine arrivals and
        property changes (``set_properties``) start a pass by themselves."""

    def clear(taskids=None, owner=None):
        """Forget finished tasks (those in ``taskids``; else all of them, or all
        that ``owner`` submitted); returns how many were forgotten.  Raises
        InvalidTaskID for an unknown id and ValueError for an unfinished one
        (nothing is forgotten then)."""

    def info():
        """A dict describing the service: ``scheme`` (str), ``hwm`` (int, or
        None when adaptive), ``engines`` (the number registered now) and
        ``marks`` (``{engine id: current mark}``)."""

    def session():
        """This service as one client sees it: an :class:`ITaskSession`.
        Each client connection gets one (see
        :mod:`plait.kernel.controller.tasksession`)."""


class ITaskSession(ITaskController):
    """One client's view of the task service: the default owner of its
    methods is the session itself, and its blocking calls are its own."""

    def clear(taskids=None, all_clients=False):
        """Forget finished tasks: those in ``taskids``; else all that this
        session submitted, or every client's with ``all_clients``.  Returns how
        many were forgotten; errors as :meth:`ITaskController.clear`."""

    closed = Attribute("True once :meth:`close` was called.")

    def close():
        """The client went away: drop the ids it reserved and did not use,
        cancel its blocking calls still waiting.  Closing again does nothing."""


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
        (all of them available).  If it raises, or returns anything else,
        the controller logs it and the task waits for the next pass."""

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
    :class:`~plait.wire.errors.RemoteFailure` (so the client raises the
    controller's exception type and message); otherwise ``value`` is the
    result described by :class:`ITaskController` (records encoded with
    :func:`~plait.wire.task.encode_result`).

    Security: a reference to this interface (the tc FURL) is as powerful as
    the controller's own account.  Every task may carry a ``depend``
    function, which the controller unpickles and calls in its own process
    and event loop (as the original system did), so a holder of the FURL
    can run any code there with the controller's rights.  Give the FURL
    only to those you would give that account.
    """

    __remote_name__ = "plait.RITaskController"

    def reserve(n=IntegerConstraint(maxBytes=8)):
        """Value: the first of ``n`` task ids reserved for this connection."""
        return Outcome

    def submit(tasks=Submissions):
        """Submit tasks under ids this connection reserved; value:
        ``[(taskid, reason)]`` refused."""
        return Outcome

    def submit_then(tasks=Submissions, method=UnicodeConstraint(maxLength=32),
                    args=ListOf(Any(), maxLength=8)):
        """:meth:`submit` ``tasks``, then call ``method(*args)`` (any method
        below but ``open_upload``, ``open_channel`` and ``open_session``), in
        one message.

        Value: ``(refused, outcome of the method)``: the tasks are submitted
        whatever becomes of the method, whose own outcome ``(ok, value)``
        says whether it was refused (an unknown method, bad arguments) or
        failed.
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

    def clear(everything=BooleanConstraint(), taskids=TaskIds, all_clients=FlagOff):
        """Forget finished results (``everything`` this client submitted, or every
        client's with ``all_clients``; else ``taskids``); value: how many.

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
        (see :mod:`plait.wire.channel`), as a connection of its own: the
        ids it reserves are its own, and are dropped when it closes."""
        return TupleOf(Token, IntegerConstraint())

    def end_session():
        """End this connection's session at once, as its disconnection would
        (its unused task ids are dropped, its waiting calls cancelled); value
        None.  Refused on the published object, which is no session."""
        return Outcome

    def open_session(listener=Any()):
        """For a client that stays on foolscap: a reference to an object
        offering these same calls as a connection of its own (as a channel
        is).  ``listener`` is any Referenceable of the client; when its
        connection is lost the session ends (its reserved ids are dropped,
        its blocking calls forgotten)."""
        return Any()
