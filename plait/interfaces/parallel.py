"""The later API generation: one interface for views of both kinds, and the hub.

:class:`IParallel` is the controller-side service behind ``plait.parallel``'s
``Client``; :class:`RIParallel` is what the ``ipcontroller-client.furl``
capability grants over the wire.  Direct views and load-balanced views both
submit *tasks* (:mod:`plait.wire.task`: ``call`` and ``execute`` kinds; a
direct view's are *pinned* to their engine), so every request has one id,
one record in the hub and one way back: each client session receives the
records of its tasks as they finish (:meth:`IParallelSession.results`).

Security: this capability lets its holder run code on the engines (as the
mec and tc FURLs do) and read, wait for and purge every record of the hub,
whoever submitted it; it runs no code in the controller (a task with a
controller-side ``depend`` is refused), and ``shutdown(hub=True)`` stops
the controller.

Wire contract: the ``__remote_name__`` of each RemoteInterface here is how
the two ends of a connection recognise it; keep those names.
"""

from __future__ import annotations

from foolscap.api import RemoteInterface
from foolscap.schema import (
    Any,
    BooleanConstraint,
    ByteStringConstraint,
    IntegerConstraint,
    ListOf,
    TupleOf,
    UnicodeConstraint,
)
from zope.interface import Attribute, Interface

from plait.interfaces.engine import WIRE_BYTES, Address, ChannelTicket, Token
from plait.interfaces.task import FlagOff, ITaskSession, Submissions, TaskIds

Outcome = TupleOf(BooleanConstraint(), Any())
Keys = ListOf(UnicodeConstraint(maxLength=64), maxLength=64)


class IHub(Interface):
    """The record of every task of a controller, for every client.

    Records are dicts (see :mod:`plait.kernel.controller.hub`); methods
    returning a Deferred fail with the store's error (QueryError, a
    ValueError, for a query it does not understand).
    """

    prefix = Attribute("The 64-bit number naming this controller in message ids.")
    first_free_id = Attribute("The lowest task id no record holds: where the task ids of "
                              "a controller started on this hub begin.")

    def submitted(task, data):
        """The task controller accepted ``task`` (submitted as the bytes ``data``)."""

    def durable():
        """A Deferred firing once every task submitted and finished so far would
        survive the controller's death (at once for a store that outlives
        nothing): with None, or with a text saying why some may not (a write to
        disk failed); it never fails."""

    def finished(record, task):
        """``task`` finished with the TaskResultRecord ``record``."""

    def msg_id(taskid):
        """The message id (a UUID string) of task ``taskid``."""

    def taskid(msg_id):
        """The task id a message id names here, or None."""

    def records(taskids, block=False, with_requests=True):
        """A Deferred firing with the records of ``taskids`` (None for unknown
        ids; ``status`` None for unfinished ones), once all are finished if
        ``block``; without ``with_requests``, unfinished ones may lack their
        request (a cheaper read)."""

    def status(taskids):
        """A Deferred firing with ``{'pending': ids, 'completed': ids, 'unknown': ids}``."""

    def history():
        """A Deferred firing with every task id known, in submission order."""

    def query(query, keys=None):
        """A Deferred firing with the records matching a Mongo-style ``query``,
        with the ``keys`` given (all when None), ``id`` always among them."""

    def query_rows(query, keys=None):
        """As ``query``, firing with ``(columns, rows)``: each record a tuple of
        its values in ``columns`` order."""

    def purge(taskids):
        """Forget finished records (all when None); fails with ValueError for an
        unfinished one (nothing is purged then)."""


class IParallelSession(ITaskSession):
    """One client of the later generation: a task session whose tasks are the
    later generation's, and whose finished records come back to it."""

    uuid = Attribute("A string naming this client in the hub's records (client_uuid).")
    service = Attribute("The IParallel this session belongs to.")

    def results():
        """A Deferred firing with ``(records, engines, output)`` as soon as there
        is news: the TaskResultRecords of this session's tasks finished since
        the last call, the engine ids now if the engines changed (else None),
        and what its running tasks printed, ``[(taskid, engine_id, name, text)]``.  One
        call at a time; cancelled when the session closes."""

    def push_results(deliver):
        """From now on, hand the news to ``deliver((records, engines, output))``
        (as :meth:`results` fires with it) at the end of each reactor turn that
        had some, instead of waiting for :meth:`results` calls; until the
        session closes.  Returns None."""

    def resubmit(taskids):
        """Submit again, under new ids, finished tasks (of any client): the new
        ids, in order.  ValueError for an unfinished task, InvalidTaskID for
        an unknown or purged one."""


class IParallel(Interface):
    """The controller-side service of ``plait.parallel``'s clients."""

    hub = Attribute("The IHub.")

    def session():
        """A new :class:`IParallelSession`."""

    def get_ids():
        """The registered engine ids."""

    def wait_for_engines(n):
        """A Deferred firing with the id list once ``n`` engines are registered."""

    def info():
        """A dict: ``prefix`` (of message ids), ``scheme``, ``hwm``, ``engines`` (a
        count), ``ids`` (the engine ids), ``db``."""

    def queue_status(verbose=False):
        """``{engine_id: {'queue': n, 'tasks': n, 'completed': n}, 'unassigned': n}``
        (lists of task ids instead of counts with ``verbose``)."""

    def purge(taskids):
        """Forget finished tasks (all when None) in the hub and in the task
        controller; a Deferred (fails with ValueError for an unfinished one)."""

    def shutdown(targets, hub):
        """Stop the ``targets`` engines (a list of ids, or None for all) and, with
        ``hub``, the controller; a Deferred firing once the engines have left."""

    def setup(lines):
        """Run Python source ``lines`` on every engine now, and on every engine that
        registers from now on before anything else (see IMultiEngine.setup); a
        Deferred firing with the ids it ran on now."""

    def send_signal(signum, targets):
        """Deliver signal ``signum`` to the ``targets`` engines (ids, or None for
        all) now (SIGINT interrupts the user code they run); a Deferred firing
        with the ids signalled.  ValueError for a number that is not a signal."""


class RIParallel(RemoteInterface):
    """What the ``ipcontroller-client.furl`` capability grants.  Every method
    answers an outcome ``(ok, value)``; records travel encoded with
    :func:`plait.wire.records.encode_result` (``status`` None: unfinished)."""

    __remote_name__ = "plait.RIParallel"

    def info():
        return Outcome

    def get_ids():
        return Outcome

    def wait_for_engines(n=IntegerConstraint()):
        return Outcome

    def reserve(n=IntegerConstraint(maxBytes=8)):
        return Outcome

    def submit(tasks=Submissions):
        return Outcome

    def submit_one_way(tasks=Submissions):
        """``submit`` called one way (``callRemoteOnly``): nothing is answered, a
        refused task comes back as a failed record; acknowledged (and so kept
        through a controller's restart) by the next answered call."""
        return None

    def submit_then(tasks=Submissions, method=UnicodeConstraint(maxLength=32),
                    args=ListOf(Any(), maxLength=8)):
        """Submit, then call ``method(*args)`` (as the Task interface does)."""
        return Outcome

    def results():
        """Value: ``(records, engine ids or None, output)`` once there is news (a
        long poll): the records (one :func:`~plait.wire.records.encode_results`)
        of this session's tasks finished since the last call, the engine ids if
        the engines changed, and what its running tasks printed."""
        return Outcome

    def push_results():
        """(On a channel) from now on the news comes as ``results_ready`` calls of
        the client's end of the channel (an :class:`RIParallelListener`), sent
        without waiting for an answer, instead of answers to ``results``.
        Value: None; fails on foolscap alone (use ``results`` there)."""
        return Outcome

    def abort(taskids=TaskIds):
        """Abort unfinished tasks; value: the ids that had finished already."""
        return Outcome

    def records(taskids=TaskIds, block=FlagOff):
        """Value: the encoded records of ``taskids`` (None for unknown ids)."""
        return Outcome

    def result_status(taskids=TaskIds):
        return Outcome

    def history():
        return Outcome

    def query_rows(query=WIRE_BYTES, keys=Keys, everything=BooleanConstraint()):
        """``query``: a dict pickled as plain data; ``everything``: all keys
        (``keys`` ignored).  Value: the matching records as one plain pickle of
        ``(columns, rows)``, each row a tuple of values in ``columns`` order."""
        return Outcome

    def purge(everything=BooleanConstraint(), taskids=TaskIds):
        return Outcome

    def resubmit(taskids=TaskIds):
        return Outcome

    def queue_status(verbose=FlagOff):
        return Outcome

    def shutdown(everyone=BooleanConstraint(), targets=ListOf(IntegerConstraint()),
                 hub=BooleanConstraint()):
        return Outcome

    def setup(lines=UnicodeConstraint(maxLength=16 << 20)):
        """Value: the engine ids the code ran on now."""
        return Outcome

    def send_signal(signum=IntegerConstraint(), everyone=BooleanConstraint(),
                    targets=ListOf(IntegerConstraint())):
        """Value: the engine ids signalled."""
        return Outcome

    def open_upload(size=IntegerConstraint(maxBytes=16), readers=IntegerConstraint()):
        return TupleOf(Token, Token, Address)

    def open_channel():
        """A ticket for a channel that is a session of its own."""
        return ChannelTicket

    def open_session(listener=Any()):
        """A reference to a session of its own, ended with ``listener``'s connection."""
        return Any()

    def end_session():
        return Outcome



#: The records one push may carry: everything finished in a reactor turn, as the
#: long poll's answer may (inline results are up to 1 MiB each).
PUSHED_RECORDS = ByteStringConstraint(maxLength=1 << 30)


class RIParallelListener(RemoteInterface):
    """What a ``plait.parallel`` client's end of its channel serves to the
    controller once it asked for ``push_results``: the news, and nothing else."""

    __remote_name__ = "plait.RIParallelListener"

    def results_ready(records=PUSHED_RECORDS, engines=Any(), output=Any()):
        """As ``RIParallel.results`` answers: ``records`` (one
        :func:`~plait.wire.records.encode_results`), the engine ids or None,
        what running tasks printed ``[(taskid, engine_id, name, text)]``."""
        return None
