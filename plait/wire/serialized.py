"""Values that stay serialized on the client.

:class:`Serialized` is what ``pull_serialized`` returns and what
``push_serialized`` accepts: the pickled form of a value living on an
engine.  The client can move it from engine to engine without unpickling
it, so it works for objects whose classes exist only on the engines::

    >>> blobs = mec.pull_serialized('model', targets=0)   # [Serialized]
    >>> mec.push_serialized({'model': blobs[0]}, targets=[1, 2, 3])

Pickling a :class:`Serialized` yields the pickle of its value: once
unpickled (on an engine) it *is* the value again.  :meth:`Serialized.unpack`
rebuilds the value on the client, when its classes exist there.

Wire contract: ``Serialized.__reduce__`` names
:func:`plait.wire.serialize.deserialize`; keep that name.
"""

from __future__ import annotations

from typing import Any

from plait.wire.serialize import deserialize, serialize


class Serialized:
    """The serialized form of one value (``data``: plait payload bytes)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"Serialized wraps payload bytes, not a {type(data).__name__}")
        self.data = bytes(data)

    @classmethod
    def of(cls, value: Any) -> Serialized:
        """Serialize ``value`` here (SerializationError says what failed)."""
        return cls(serialize(value))

    def unpack(self) -> Any:
        """The value, rebuilt in this process."""
        return deserialize(self.data)

    @property
    def nbytes(self) -> int:
        """The size of the serialized form, in bytes."""
        return len(self.data)

    def __reduce__(self) -> tuple:
        return deserialize, (self.data,)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Serialized) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"<Serialized {len(self.data)} bytes>"
