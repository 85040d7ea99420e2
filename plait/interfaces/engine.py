"""Engines as the controller sees them, and the wire between the two.

An engine is a Python process that runs user code.  It connects to the
controller with the engine FURL, calls :class:`RIEngineRegistrar.register_engine`
and hands over a reference implementing :class:`RIEngine`, through which the
controller drives it.  Inside the controller that reference is wrapped in an
:class:`IEngine`, so that the kernel services never touch foolscap.

Replies
-------
Every engine command answers with a *reply*, a ``(ok, payload)`` tuple:

* ``ok`` is True: ``payload`` is the command's value, serialized by
  :mod:`plait.wire.serialize` (opaque bytes to the controller);
* ``ok`` is False: ``payload`` is a serialized :class:`plait.wire.errors.RemoteFailure`
  describing the exception raised on the engine (type name, message,
  traceback text, and the pickled exception when it could be pickled).

The controller creates failure replies of its own the same way, for instance
an ``EngineError`` when an engine dies with commands queued on it.

Wire contract: the ``__remote_name__`` of each RemoteInterface here is how
the two ends of a connection recognise it; keep those names.
"""

from __future__ import annotations

from foolscap.api import RemoteInterface
from foolscap.schema import (
    BooleanConstraint,
    ByteStringConstraint,
    ChoiceOf,
    IntegerConstraint,
    ListOf,
    NumberConstraint,
    Optional,
    TupleOf,
    UnicodeConstraint,
)
from zope.interface import Attribute, Interface

from plait.wire.enrollment import MEMBER_MAX, SECRET_MAX
from plait.wire.serialize import INLINE_LIMIT

#: A payload on the wire (the limit leaves room for framing around INLINE_LIMIT).
WIRE_BYTES = ByteStringConstraint(maxLength=INLINE_LIMIT + (1 << 16))
CODE = UnicodeConstraint(maxLength=16 << 20)
NAME = UnicodeConstraint(maxLength=1024)
NAMES = ListOf(NAME, maxLength=100_000)
Reply = TupleOf(BooleanConstraint(), WIRE_BYTES)
Properties = WIRE_BYTES  # a dict of plain data, pickled by ``_serialize.dumps_plain``
EngineId = IntegerConstraint()
Uuid = UnicodeConstraint(maxLength=64)
Token = ByteStringConstraint(maxLength=64)
Address = TupleOf(UnicodeConstraint(maxLength=255), IntegerConstraint())
ChannelTicket = TupleOf(Token, IntegerConstraint())


class RIEngine(RemoteInterface):
    """What the controller may ask of an engine (published by the engine)."""

    __remote_name__ = "plait.RIEngine"

    def execute(lines=CODE, filename=UnicodeConstraint(maxLength=4096)):
        """Run ``lines`` (read from ``filename``; '' for none); value: the result dict."""
        return Reply

    def push(namespace=WIRE_BYTES):
        """Merge a serialized dict into the namespace; value: None."""
        return Reply

    def pull(keys=NAMES):
        """Value: the list of values of ``keys`` (NameError for a missing one)."""
        return Reply

    def apply(call=WIRE_BYTES):
        """Call a serialized ``(function, args, kwargs)``; value: its return value."""
        return Reply

    def get_result(i=ChoiceOf(None, IntegerConstraint())):
        """Value: the result dict of command number ``i`` (None: the last)."""
        return Reply

    def keys():
        """Value: the sorted list of names in the namespace."""
        return Reply

    def reset():
        """Empty the namespace; value: None."""
        return Reply

    def run_task(task=WIRE_BYTES):
        """Run one serialized task atomically (clear, push, run, pull, clear)."""
        return Reply

    def kill():
        """Exit the engine process soon after answering."""
        return None

    def skip_tasks(taskids=ListOf(int, maxLength=100_000)):
        """Do not run the tasks ``taskids`` of a batch if they have not started
        (answered at once, even while user code runs: they were aborted)."""
        return None

    def send_signal(signum=IntegerConstraint()):
        """Deliver signal ``signum`` to the engine process, at once, even while user
        code runs: SIGINT interrupts the user code running (a KeyboardInterrupt in
        it; the engine stays), and does nothing between commands."""
        return None

    def ping():
        """Liveness probe."""
        return BooleanConstraint()


class RIEngineSession(RemoteInterface):
    """What one registered engine may ask of the controller, for itself only."""

    __remote_name__ = "plait.RIEngineSession"

    def set_properties(properties=Properties):
        """Replace this engine's properties (plain data, see ``dumps_plain``)."""
        return None

    def open_upload(size=IntegerConstraint(maxBytes=16), readers=IntegerConstraint()):
        """Reserve a blob on the data channel: ``(token, blob_id, address)``."""
        return TupleOf(Token, Token, Address)

    def task_output(chunks=ListOf(TupleOf(IntegerConstraint(maxBytes=16),
                                          UnicodeConstraint(maxLength=16),
                                          UnicodeConstraint(maxLength=1 << 17)),
                                  maxLength=10_000)):
        """What running tasks printed so far: ``[(taskid, 'stdout' or 'stderr',
        text)]`` (a preview: the whole output comes with each result)."""
        return None

    def usage(pid=IntegerConstraint(), host=UnicodeConstraint(maxLength=255),
              rss=IntegerConstraint(maxBytes=16), cpu=NumberConstraint()):
        """(one-way, every few seconds) The engine's pid, host, resident memory
        (bytes) and CPU seconds so far: the status page shows them."""
        return None

    def last_words(reason=UnicodeConstraint(maxLength=1000)):
        """Why this engine is about to exit (over its memory limit...): the
        EngineError of what it ran and held says so."""
        return None


class RIEngineRegistrar(RemoteInterface):
    """The only capability the engine FURL grants: joining the cluster."""

    __remote_name__ = "plait.RIEngineRegistrar"

    def open_channel():
        """A ticket ``(token, port)`` for the engine's command channel."""
        return ChannelTicket

    def register_engine(engine=RIEngine, uuid=Uuid, properties=Properties, channel=Token,
                        engine_id=Optional(ChoiceOf(None, IntegerConstraint()), None),
                        rejoin=Optional(BooleanConstraint(), False),
                        ran=Optional(WIRE_BYTES, b""),
                        secret=Optional(ByteStringConstraint(maxLength=SECRET_MAX), b""),
                        member=Optional(ByteStringConstraint(maxLength=MEMBER_MAX), b"")):
        """Register ``engine``; returns ``(id, session)``.

        ``properties`` is plain data (``dumps_plain``): the controller never
        unpickles anything else from an engine.  ``channel`` is the token of a
        channel the engine opened with a ticket from :meth:`open_channel` (b''
        for none): commands then travel on it.  ``session`` is the engine's
        own :class:`RIEngineSession`.  ``engine_id``: a restarted engine's
        claim to the id of the engine it replaces (an id given before); with
        ``rejoin``, the claim of an engine joining again to its own id (its
        controller restarted, or the network was cut), kept unless another
        engine holds that id now.  ``ran``: (joining again) the batch-reply
        entries of the tasks it finished in its last seconds, ``[(taskid,
        entry)]`` pickled as plain data: the reply carrying them may have died
        with the controller, which then takes them instead of running those
        tasks again.  ``secret``: a one-time enrollment secret, and ``member``
        the engine's member key (see :mod:`plait.wire.enrollment`); a
        controller that admits enrolled engines only fails the call with
        :class:`~plait.wire.errors.EnrollmentRefused` unless the secret is
        valid and unused, or the member key is the one recorded for the id
        claimed.
        """
        return TupleOf(EngineId, RIEngineSession)


class IEngine(Interface):
    """One registered engine, as the controller's services see it.

    Every method returns a Deferred that fires with a reply ``(ok, payload)``
    (see the module docstring).  When the engine is lost, the Deferred fails
    with :class:`plait.wire.errors.EngineError`.
    """

    id = Attribute("The integer id, assigned at registration.")
    uuid = Attribute("A string chosen by the engine, unique for its lifetime.")
    last_words = Attribute("Why the engine said it is about to go (None until it does): "
                           "the EngineError of a command it was running says so.")

    def execute(lines, filename=None):
        """Run Python source ``lines`` (from ``filename`` when given, for tracebacks)."""

    def push(namespace):
        """Merge serialized ``namespace`` (bytes) into the engine namespace."""

    def pull(keys):
        """Fetch the values of the names in the list ``keys``."""

    def apply(call):
        """Call a serialized ``(function, args, kwargs)``."""

    def get_result(i):
        """Fetch the result dict of command ``i`` (None: the last one)."""

    def keys():
        """List the names in the namespace."""

    def reset():
        """Clear the namespace."""

    def run_task(task):
        """Run a serialized task (see :mod:`plait.kernel.controller.task`)."""

    def kill():
        """Ask the engine process to exit; fires with None."""

    def skip_tasks(taskids):
        """Tell the engine not to start the tasks ``taskids`` of the batches it
        holds, and interrupt the one of them running now, if any (they were
        aborted); fires with None (never fails)."""

    def send_signal(signum):
        """Deliver signal ``signum`` to the engine process (SIGINT: interrupt the
        user code it runs); fires with None (never fails: an engine gone has
        nothing to interrupt)."""


class IEngineServer(Interface):
    """The engine process, as its network adapter sees it (the engine side).

    Commands are the methods of :class:`RIEngine`; each runs in the
    engine's main thread and answers with a reply ``(ok, payload)``.
    """

    def call(method, args):
        """Run the command ``method`` with the tuple ``args`` in the calling
        thread (the engine's main thread) and return its reply.  ``kill``
        and ``ping`` are answered too (None and True)."""

    def submit(method, args):
        """From the reactor thread: have the main thread run ``call(method,
        args)``; a Deferred firing with the reply."""

    def kill():
        """Exit the process soon, from any thread, even while user code runs."""

    def skip_tasks(taskids):
        """From any thread: tasks of a batch not to run if they have not started."""

    def send_signal(signum):
        """From any thread: deliver ``signum`` to this process (SIGINT interrupts
        the user code running, if any)."""


class IEnrollment(Interface):
    """Which processes a controller admits as engines (see
    :mod:`plait.wire.enrollment`): those that show a valid, unused enrollment
    secret, or the member key recorded for the id they claim."""

    def admit(secret, member, claim):
        """Check the credentials of an engine claiming the id ``claim`` (None:
        no claim); a secret admitted is used up.  Returns None; raises
        EnrollmentRefused saying why the engine is not admitted."""

    def bind(engine_id, member):
        """Record ``member`` (a member key; b'': none) as the key of the engine
        registered as ``engine_id``, and the secrets admitted so far, on disk
        before it returns: kept across controller restarts.  OSError when
        they cannot be written (the engine is not registered then)."""


class IEngineRegistry(Interface):
    """The set of engines connected to a controller.

    Engines get ids 0, 1, 2 ... in registration order; an id is never reused
    while the controller runs.
    """

    def register(engine, uuid, properties, engine_id=None, rejoin=False, ran=(),
                 secret=b"", member=b""):
        """Add ``engine`` (an :class:`IEngine` factory's product); returns its id.
        ``secret`` and ``member``: its credentials, checked by the registry's
        :class:`IEnrollment` when it has one (EnrollmentRefused, and nothing
        registered, when they do not admit it).
        ``engine_id``: an id given before, which a restarted engine takes over
        (the engine registered under it, if any, is dropped); with ``rejoin``,
        an engine joining again takes its id back only if no engine holds it.
        ``ran``: what it says it finished before (see ``RIEngineRegistrar``),
        told to the observers' ``engine_ran(engine_id, ran)`` before their
        ``engine_added``."""

    def unregister(engine_id, reason="unregistered"):
        """Drop an engine; its queued and running commands fail with EngineError
        (saying ``reason``, or the engine's last words if it said why it goes)."""

    def get_ids():
        """The ids of the engines registered now, sorted."""

    def __contains__(engine_id):
        """Whether ``engine_id`` is registered now."""

    def get_engine(engine_id):
        """The :class:`IEngine` for ``engine_id``; KeyError when there is none."""

    def get_queue(engine_id):
        """The :class:`IEngineQueue` of ``engine_id``; KeyError when there is none."""

    def get_properties(engine_id):
        """The properties dict of ``engine_id`` (a live dict; do not mutate)."""

    def set_properties(engine_id, properties):
        """Replace the properties of ``engine_id`` and notify observers."""

    def report_usage(engine_id, pid, host, rss, cpu):
        """Engine ``engine_id`` reports its pid, host, resident memory (bytes) and
        CPU seconds so far (see :meth:`get_usage`)."""

    def get_usage(engine_id):
        """``{'pid', 'host', 'memory', 'cpu'}`` of ``engine_id`` as last reported
        (``cpu``: percent of one core since the report before), or None before
        its first report; KeyError for an engine that is not registered."""

    def last_words(engine_id, reason):
        """Engine ``engine_id`` says why it is about to go: its departure, and the
        EngineError of its commands, will say so."""

    def report_output(engine_id, chunks):
        """What the running tasks of ``engine_id`` printed, ``[(taskid, name,
        text)]``: observers hear of it (KeyError for an unknown engine)."""

    def add_observer(observer):
        """Call ``observer.engine_added(id)``, ``engine_removed(id)`` and
        ``properties_changed(id)`` as they happen, and
        ``engine_output(id, chunks)`` if it has that method."""

    def remove_observer(observer):
        """Stop notifying ``observer``."""

    def wait_for_engines(n):
        """A Deferred that fires with the id list once ``n`` engines are registered."""


class IEngineQueue(Interface):
    """The FIFO queue in front of one engine.

    Commands are run one after another, in submission order, so that an
    engine that blocks in user code is hidden behind an asynchronous API.
    """

    def submit(command, label):
        """Queue ``command`` (a callable taking the :class:`IEngine` and
        returning a Deferred).  Returns a Deferred with the command's result,
        or failing with QueueCleared / EngineError."""

    def clear():
        """Fail every command not yet started with QueueCleared."""

    def status():
        """A dict ``{'queue': [labels waiting], 'pending': [labels handed to the engine]}``."""

    def __len__():
        """Number of commands waiting or running."""
