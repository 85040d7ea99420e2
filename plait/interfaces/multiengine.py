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
from zope.interface import Interface

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

    def run(lines, filename, targets, block):
        """Run the source ``lines`` of the file ``filename`` on each target.

        As :meth:`execute`, except that tracebacks name ``filename``.
        """

    def push(namespace, targets, block):
        """Push one serialized dict to each target."""

    def push_each(payloads, block):
        """Push a different serialized dict to each engine: ``{id: payload}``."""

    def pull(keys, targets, block):
        """Pull the values of ``keys`` from each target."""

    def apply(call, targets, block):
        """Call a serialized ``(f, args, kwargs)`` on each target."""

    def apply_each(calls, block):
        """Call a different serialized call on each engine: ``{id: call}``."""

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


class RIMultiEngine(RemoteInterface):
    """What the MultiEngine FURL grants.  Every method answers an Outcome."""

    __remote_name__ = "plait.RIMultiEngine"

    def get_ids():
        return Outcome

    def execute(lines=CODE, targets=Targets, block=Block):
        return Outcome

    def run(lines=CODE, filename=UnicodeConstraint(maxLength=4096), targets=Targets, block=Block):
        return Outcome

    def push(namespace=WIRE_BYTES, targets=Targets, block=Block):
        return Outcome

    def push_each(payloads=DictOf(IntegerConstraint(), WIRE_BYTES, maxKeys=100_000), block=Block):
        return Outcome

    def pull(keys=NAMES, targets=Targets, block=Block):
        return Outcome

    def apply(call=WIRE_BYTES, targets=Targets, block=Block):
        return Outcome

    def apply_each(calls=DictOf(IntegerConstraint(), WIRE_BYTES, maxKeys=100_000), block=Block):
        return Outcome

    def get_result(i=ChoiceOf(None, IntegerConstraint()), targets=Targets, block=Block):
        return Outcome

    def keys(targets=Targets, block=Block):
        return Outcome

    def reset(targets=Targets, block=Block):
        return Outcome

    def kill(controller=BooleanConstraint(), targets=Targets, block=Block):
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
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def targets_from_wire(wire: tuple[bool, list[int]]) -> object:
    """Decode :data:`Targets` into ``'all'`` or a list of ids."""
    everything, ids = wire
    return "all" if everything else list(ids)
