"""What plait's processes agree on, byte for byte.

The controller, the engines and the clients are separate programs that
exchange bytes; this package is their common vocabulary and imports no
other part of plait:

``errors``
    Every exception of plait, and :class:`~plait.wire.errors.RemoteFailure`,
    the description of an exception raised elsewhere.
``serialize``
    Payloads: cloudpickle at protocol 5, frames with out-of-band buffers,
    and *plain data*, what a less trusted peer may send.
``serialized``
    :class:`~plait.wire.serialized.Serialized`, a value kept in pickled form.
``task``
    The task format: what a client submits, what the controller reads of
    it, what an engine runs, and the result record.
``bulk``
    Large payloads: the encrypted format of the data port and its peer side
    (upload, fetch).
``channel``
    The lean TLS channel that carries the calls of the hot path: both its
    ends (the controller's server, the clients' and the engines' side), as
    one protocol is best read in one place.
``tunnel``
    Where to dial: SSH tunnels to a controller that only SSH reaches, and
    the routing every connection of a client or an engine goes through.

Names here that travel by reference are a wire contract (see
:mod:`plait.kernel`, "Wire contract").
"""
