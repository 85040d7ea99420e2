"""The MultiEngine interface: every engine addressed explicitly by id.

:class:`IMultiEngine` is the controller-side service; :class:`RIMultiEngine`
is what the ``ipcontroller-mec.furl`` capability grants over the wire.

Targets are ``'all'``, an int, or a list of ints.  Commands that reach
engines answer with a list of ``(engine_id, ok, payload)`` in target order,
``ok``/``payload`` following the reply convention of
:mod:`plait.interfaces.engine`.

On the wire, targets travel as ``(all, ids)`` (see :data:`Targets`).

Every remote method answers with an *outcome* ``(ok, value)``: ``ok`` False
means the controller refused the call (for instance an unknown engine id)
and ``value`` is a serialized RemoteFailure; otherwise ``value`` is the
result, or, for a call made with ``block=False``, an int id to collect it
with :meth:`RIMultiEngine.get_pending_result`.

Wire contract: the ``__remote_name__`` of each RemoteInterface here is how
the two ends of a connection recognise it; keep those names.
"""

from __future__ import annotations

import operator

from foolscap.api import RemoteInterface
from foolscap.schema import (
    Any,
    BooleanConstraint,
    ChoiceOf,
    DictOf,
    IntegerConstraint,
    ListOf,
    TupleOf,
    UnicodeConstraint,
)
from zope.interface import Attribute, Interface

from plait.interfaces.engine import CODE, NAMES, WIRE_BYTES, Address, ChannelTicket, Token

#: Targets on the wire: ``(True, [])`` for all engines, ``(False, ids)`` otherwise
#: (foolscap's ChoiceOf cannot mix a str with a list).
Targets = TupleOf(BooleanConstraint(), ListOf(IntegerConstraint(), maxLength=100_000))
Block = BooleanConstraint()
PerEngine = ListOf(TupleOf(IntegerConstraint(), BooleanConstraint(), WIRE_BYTES), maxLength=100_000)
Outcome = TupleOf(BooleanConstraint(), Any())


class IMultiEngine(Interface):
    """The MultiEngine service of a controller.

    Engine commands return a Deferred firing with the per-engine list, or,
    when ``block`` is False, at once with an int pending-result id.  Unknown
    targets fail the Deferred with InvalidEngineID before anything is queued.
    """

    def get_ids():
        """The registered engine ids (a list, not a Deferred)."""

    def execute(lines, targets, block):
        """Run Python source on each target."""

    def setup(lines, targets, block):
        """Declare setup code: run it now as :meth:`execute` does, and on every
        engine that registers from now on (one restarted after it died, or one
        added) before anything else is sent to it.  Fires as :meth:`execute`."""

    def run(lines, filename, targets, block):
        """Run the source ``lines`` of the file ``filename`` on each target.

        As :meth:`execute`, except that tracebacks name ``filename``.
        """

    def push(namespace, targets, block):
        """Push one serialized dict to each target."""

    def push_each(payloads, everyone, block):
        """Push a different serialized dict to each engine: ``{id: payload}``.

        ``everyone``: the payloads were made for all the engines; if the
        registered engines are not exactly those, fail with EnginesChanged
        (carrying the current ids) before anything is queued.
        """

    def pull(keys, targets, block):
        """Pull the values of ``keys`` from each target."""

    def apply(call, targets, block):
        """Call a serialized ``(f, args, kwargs)`` on each target."""

    def apply_each(calls, everyone, block):
        """Call a different serialized call on each engine: ``{id: call}``
        (``everyone`` as for :meth:`push_each`)."""

    def get_result(i, targets, block):
        """The result dict of command ``i`` (None: last) on each target."""

    def keys(targets, block):
        """The namespace names on each target."""

    def reset(targets, block):
        """Clear each target's namespace."""

    def kill(controller, targets, block):
        """Stop the targets, and the controller too when ``controller``.

        Does not wait behind queued commands (they fail with EngineError);
        fires once the targets have left the registry.
        """

    def send_signal(signum, targets, block):
        """Deliver signal ``signum`` to the targets' processes now, not behind
        their queued commands: SIGINT interrupts the user code each one runs
        (that command fails with KeyboardInterrupt; the engine stays).  Fires
        with ``[(id, ok, payload)]``; ValueError for a number that is not a
        signal."""

    def clear_queue(targets, block):
        """Drop the commands waiting in each target's queue."""

    def queue_status(targets, block):
        """``[(id, {'queue': [...], 'pending': [...]}), ...]``."""

    def set_properties(properties, targets, block):
        """Update each target's properties with the dict ``properties``."""

    def get_properties(keys, targets, block):
        """Each target's properties (all of them when ``keys`` is None)."""

    def has_properties(keys, targets, block):
        """For each target, a list of booleans, one per key."""

    def del_properties(keys, targets, block):
        """Delete ``keys`` from each target's properties."""

    def clear_properties(targets, block):
        """Empty each target's properties."""

    def get_pending_result(result_id, block):
        """The result of a ``block=False`` call; taken from the store once fired."""

    def flush():
        """Forget every result not yet taken."""

    def wait_for_engines(n):
        """A Deferred firing with the id list once ``n`` engines are registered."""

    def session():
        """This service with a store of pending results of its own.

        Each client gets one, so that its results (ids, ``flush``) are its
        own business and die with its connection.
        """


class RIMultiEngine(RemoteInterface):
    """What the MultiEngine FURL grants.  Every method answers an Outcome."""

    __remote_name__ = "plait.RIMultiEngine"

    def get_ids():
        return Outcome

    def execute(lines=CODE, targets=Targets, block=Block):
        return Outcome

    def setup(lines=CODE, targets=Targets, block=Block):
        return Outcome

    def run(lines=CODE, filename=UnicodeConstraint(maxLength=4096), targets=Targets, block=Block):
        return Outcome

    def push(namespace=WIRE_BYTES, targets=Targets, block=Block):
        return Outcome

    def push_each(payloads=DictOf(IntegerConstraint(), WIRE_BYTES, maxKeys=100_000),
                  everyone=BooleanConstraint(), block=Block):
        return Outcome

    def pull(keys=NAMES, targets=Targets, block=Block):
        return Outcome

    def apply(call=WIRE_BYTES, targets=Targets, block=Block):
        return Outcome

    def apply_each(calls=DictOf(IntegerConstraint(), WIRE_BYTES, maxKeys=100_000),
                   everyone=BooleanConstraint(), block=Block):
        return Outcome

    def get_result(i=ChoiceOf(None, IntegerConstraint()), targets=Targets, block=Block):
        return Outcome

    def keys(targets=Targets, block=Block):
        return Outcome

    def reset(targets=Targets, block=Block):
        return Outcome

    def kill(controller=BooleanConstraint(), targets=Targets, block=Block):
        return Outcome

    def send_signal(signum=IntegerConstraint(), targets=Targets, block=Block):
        return Outcome

    def clear_queue(targets=Targets, block=Block):
        return Outcome

    def queue_status(targets=Targets, block=Block):
        return Outcome

    def set_properties(properties=WIRE_BYTES, targets=Targets, block=Block):
        return Outcome

    def get_properties(keys=NAMES, targets=Targets, block=Block):
        """``keys`` empty: every property."""
        return Outcome

    def has_properties(keys=NAMES, targets=Targets, block=Block):
        return Outcome

    def del_properties(keys=NAMES, targets=Targets, block=Block):
        return Outcome

    def clear_properties(targets=Targets, block=Block):
        return Outcome

    def get_pending_result(result_id=IntegerConstraint(), block=Block):
        return Outcome

    def flush():
        return Outcome

    def wait_for_engines(n=IntegerConstraint()):
        return Outcome

    def open_channel():
        """A ticket ``(token, port)`` for a channel offering these same methods."""
        return ChannelTicket

    def open_upload(size=IntegerConstraint(maxBytes=16), readers=IntegerConstraint()):
        return TupleOf(Token, Token, Address)


def targets_to_wire(targets: object) -> tuple[bool, list[int]]:
    """Encode user targets for :data:`Targets` (validation is the controller's).

    ``'all'`` (or None), an int, or a list, tuple or range of ints; any
    integer type (a NumPy integer) is accepted, booleans are not.
    """
    if targets is None or (isinstance(targets, str) and targets == "all"):
        return True, []
    single = _engine_id(targets)
    if single is not None:
        return False, [single]
    if isinstance(targets, (list, tuple, range)):
        ids = [_engine_id(t) for t in targets]
        if all(i is not None for i in ids):
            return False, ids  # type: ignore[return-value]
    raise TypeError(f"targets must be 'all', an int or a list of ints, not {targets!r}")


def _engine_id(value: object) -> int | None:
    """``value`` as an int when it is an integer (not a bool), else None."""
    if isinstance(value, (bool, str)) or not hasattr(value, "__index__"):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def targets_from_wire(wire: tuple[bool, list[int]]) -> object:
    """Decode :data:`Targets` into ``'all'`` or a list of ids."""
    everything, ids = wire
    return "all" if everything else list(ids)


class IPendingResult(Interface):
    """A result that a call made with ``block=False`` will produce."""

    r = Attribute("Shorthand for get_result(block=True).")

    def get_result(default=None, block=True):
        """The result, raising the call's exception; ``default`` when not
        blocking and not ready yet.  Later calls give the same outcome."""

    def add_callback(f, *args, **kwargs):
        """Have get_result return ``f(result, *args, **kwargs)``; callbacks chain."""


class IFullBlockingMultiEngineClient(Interface):
    """What the blocking MultiEngine client offers (``MultiEngineClient``).

    ``targets`` (``'all'``, an int or a list of ints) and ``block`` default
    to the attributes of the same names; with ``block=False`` each method
    returns an :class:`IPendingResult`.
    """

    targets = Attribute("The default engines: 'all', an int or a list of ints.")
    block = Attribute("The default blocking mode (True).")

    def get_ids():
        """The ids of the registered engines."""

    def execute(lines, targets=None, block=None):
        """Run Python source on the engines; a ResultList."""

    def setup(lines, targets=None, block=None):
        """Run Python source now and on every engine that joins later."""

    def run(filename, targets=None, block=None):
        """Run a local Python file on the engines; a ResultList."""

    def push(namespace, targets=None, block=None):
        """Push a dict of names to values into the engine namespaces."""

    def pull(keys, targets=None, block=None):
        """Values of the names ``keys`` from each engine."""

    def zip_pull(keys, targets=None, block=None):
        """Pulled values grouped by name: a tuple per name."""

    def push_function(namespace, targets=None, block=None):
        """Push functions (closures included)."""

    def pull_function(keys, targets=None, block=None):
        """Pull functions."""

    def push_serialized(namespace, targets=None, block=None):
        """Push values given in serialized form."""

    def pull_serialized(keys, targets=None, block=None):
        """Pull values in serialized form, without unpickling them."""

    def scatter(key, seq, dist="b", flatten=False, targets=None, block=None):
        """Partition a sequence over the engines."""

    def gather(key, dist="b", flatten=False, targets=None, block=None):
        """Join a partitioned sequence from the engines."""

    def map(func, *sequences):
        """A parallel map returning a list."""

    def raw_map(func, seqs, dist="b", targets=None, block=None):
        """``map(func, *seqs)`` in parallel."""

    def mapper(dist="b", targets=None, block=None):
        """An object whose ``map`` maps in parallel with these options."""

    def parallel(dist="b", targets=None, block=None):
        """A decorator making parallel functions."""

    def get_result(i=None, targets=None, block=None):
        """The result dicts of command ``i`` (None: the last)."""

    def keys(targets=None, block=None):
        """The variable names on each engine."""

    def reset(targets=None, block=None):
        """Empty the engine namespaces."""

    def kill(controller=False, targets=None, block=None):
        """Stop engines (and the controller)."""

    def interrupt(targets=None, block=None):
        """Interrupt the user code the engines run (a KeyboardInterrupt in it)."""

    def send_signal(signum, targets=None, block=None):
        """Deliver a signal to the engine processes (SIGINT: interrupt)."""

    def clear_queue(targets=None, block=None):
        """Drop the commands waiting for the engines."""

    def queue_status(targets=None, block=None):
        """The running and waiting commands per engine."""

    def barrier(pending_results):
        """Wait until every PendingResult given is ready."""

    def flush():
        """Drop the results kept for PendingResults not yet read."""

    def clear_pending_results():
        """The same as flush()."""

    def get_pending_deferred(result_id, block=True):
        """The result stored under a PendingResult's id."""

    def set_properties(properties, targets=None, block=None):
        """Update engine properties."""

    def get_properties(keys=None, targets=None, block=None):
        """Engine properties."""

    def has_properties(keys, targets=None, block=None):
        """Whether engines have properties."""

    def del_properties(keys, targets=None, block=None):
        """Remove engine properties."""

    def clear_properties(targets=None, block=None):
        """Remove all engine properties."""

    def benchmark(push_size=10000):
        """Latency and push throughput of the cluster, as a dict."""

    def activate():
        """Make this client the one of the %px, %autopx and %result magics."""

    def findsource_file(frame):
        """The remote code of a with block, from its file."""

    def findsource_ipython(frame):
        """The remote code of a with block, from the IPython cell."""

    def __len__():
        """The number of engines."""

    def __getitem__(key):
        """``mec['a']``: pull ``a``."""

    def __setitem__(key, value):
        """``mec['a'] = v``: push ``a``."""
