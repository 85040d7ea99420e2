"""Serialization of user objects for the wire.

Everything user-supplied (values, functions, closures, exceptions) is pickled
with cloudpickle at protocol 5.  A serialized payload is ``bytes`` whose first
byte says what follows:

* ``b"P"``: a cloudpickle stream carrying the object in-band;
* ``b"F"``: a *frame* (see below): a pickle stream plus the out-of-band
  buffers it refers to, so that a value pickled once with
  :func:`serialize_parts` can still travel inline;
* ``b"B"``: a descriptor of a blob on the bulk data channel
  (:mod:`plait.wire.bulk`), used for payloads above ``INLINE_LIMIT``.

Frames
------
A frame is the layout shared by ``b"F"`` payloads and the plaintext of bulk
blobs.  All integers are little-endian::

    u32 nbuf | u64 head_len | u64 len[0] ... u64 len[nbuf-1]
    head (the pickle stream)
    zero padding to a multiple of FRAME_ALIGN, buffer 0,
    zero padding to a multiple of FRAME_ALIGN, buffer 1, ...

Offsets are relative to the start of the frame, so when a frame is read into
an aligned buffer, every out-of-band buffer (numpy array data) comes back
aligned too and can be used in place, without a copy.

The controller never unpickles user payloads; it only looks at the first byte.
"""

from __future__ import annotations

import contextlib
import gc
import pickle
import struct
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from plait.wire import pickling
from plait.wire.errors import SerializationError

if TYPE_CHECKING:
    import mmap

#: Largest payload carried inline in a message; bigger ones travel on the bulk
#: data channel (:mod:`plait.wire.bulk`).
INLINE_LIMIT = 1 << 20

INLINE = b"P"
FRAMED = b"F"
BULK = b"B"

#: Out-of-band buffers start at multiples of this offset inside a frame.
FRAME_ALIGN = 64
_COUNT = struct.Struct("<IQ")
_LENGTH = struct.Struct("<Q")
#: Upper bound on the number of out-of-band buffers in one frame.
MAX_FRAME_BUFFERS = 1 << 24


def _describe(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def serialize(obj: Any) -> bytes:
    """Pickle ``obj`` in-band; raise SerializationError naming what failed."""
    try:
        return INLINE + pickling.dumps(obj)
    except Exception as exc:  # pickling raises many types
        raise SerializationError(
            f"could not serialize {_describe(obj)} ({type(obj).__name__}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


#: The picklers a client may choose for what it sends (``use_pickle()`` and co.):
#: every one writes a pickle stream the receiver reads with :mod:`pickle`.
PICKLERS = ("cloudpickle", "pickle", "dill")


def _cloud_dumps(obj: Any, protocol: int = 5, buffer_callback: Any = None) -> bytes:
    return pickling.dumps(obj, buffer_callback)


def _dumps(pickler: str) -> Any:
    if pickler == "cloudpickle":
        return _cloud_dumps
    if pickler == "pickle":
        return pickle.dumps
    if pickler == "dill":
        try:
            import dill
        except ImportError:
            raise SerializationError("use_dill() needs dill: pip install dill") from None
        return dill.dumps
    raise SerializationError(f"unknown pickler {pickler!r}: one of {PICKLERS}")


def serialize_parts(obj: Any, pickler: str = "cloudpickle") -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj`` with its large buffers out-of-band (no copies of them),
    with ``pickler`` (see :data:`PICKLERS`).

    Returns the pickle stream and the list of raw buffers it refers to.
    """
    buffers: list[pickle.PickleBuffer] = []
    dumps = _dumps(pickler)
    try:
        head = dumps(obj, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        raise SerializationError(
            f"could not serialize {_describe(obj)} ({type(obj).__name__}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return head, [b.raw() for b in buffers]


def _padding(offset: int) -> int:
    return -offset % FRAME_ALIGN


def _flat(buffer: Any) -> memoryview:
    view = memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def frame_parts(head: bytes, buffers: Sequence[Any]) -> tuple[list[memoryview], int]:
    """Lay out ``head`` and ``buffers`` as a frame, without copying either.

    Returns the frame as a list of byte segments, to be written one after the
    other (``head`` and the buffers themselves are among them, as flat byte
    views), and its total length.
    """
    flat = [_flat(b) for b in buffers]
    prefix = bytearray(_COUNT.pack(len(flat), len(head)))
    for b in flat:
        prefix += _LENGTH.pack(b.nbytes)
    segments = [memoryview(bytes(prefix))]
    if len(head):
        segments.append(_flat(head))
    offset = len(prefix) + len(head)
    for b in flat:
        pad = _padding(offset)
        if pad:
            segments.append(memoryview(bytes(pad)))
            offset += pad
        if b.nbytes:
            segments.append(b)
            offset += b.nbytes
    return segments, offset


def pack_framed(head: bytes, buffers: Sequence[memoryview]) -> bytes:
    """An inline ``b"F"`` payload for a pickle stream and its out-of-band buffers.

    Without buffers this is the plain ``b"P"`` payload of the same stream.
    """
    if not buffers:
        return INLINE + head
    segments, _ = frame_parts(head, buffers)
    return FRAMED + b"".join(segments)


def frame_layout(frame: memoryview) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """Parse a frame header: ``(head span, [buffer spans])`` as (start, stop) offsets.

    Raises SerializationError when the header is inconsistent with the frame length.
    """
    total = frame.nbytes
    if total < _COUNT.size:
        raise SerializationError("truncated frame header")
    nbuf, head_len = _COUNT.unpack_from(frame, 0)
    offset = _COUNT.size
    if nbuf > MAX_FRAME_BUFFERS or offset + nbuf * _LENGTH.size > total:
        raise SerializationError(f"corrupt frame header ({nbuf} buffers)")
    lengths = [_LENGTH.unpack_from(frame, offset + i * _LENGTH.size)[0] for i in range(nbuf)]
    offset += nbuf * _LENGTH.size
    head = (offset, offset + head_len)
    offset += head_len
    spans = []
    for length in lengths:
        offset += _padding(offset)
        spans.append((offset, offset + length))
        offset += length
    if offset != total:
        raise SerializationError(
            f"corrupt frame: its header describes {offset} bytes, it holds {total}"
        )
    return head, spans


def unframe(frame: memoryview | bytearray | bytes | mmap.mmap) -> Any:
    """Unpickle a frame, passing its buffers as views into ``frame`` (no copy).

    Objects rebuilt from the buffers (numpy arrays) share memory with
    ``frame``; they are writable exactly when ``frame`` is.
    """
    view = _flat(frame)
    (h0, h1), spans = frame_layout(view)
    try:
        return pickle.loads(view[h0:h1], buffers=[view[a:b] for a, b in spans])
    except Exception as exc:
        raise SerializationError(
            f"could not deserialize a payload: {type(exc).__name__}: {exc}"
        ) from exc


def deserialize(data: bytes) -> Any:
    """Inverse of :func:`serialize` (and :func:`pack_framed`) for inline payloads.

    Arrays rebuilt from a ``b"F"`` payload get their own writable memory.
    """
    kind = data[:1]
    if kind == INLINE:
        try:
            return pickle.loads(memoryview(data)[1:])
        except Exception as exc:
            raise SerializationError(
                f"could not deserialize a payload: {type(exc).__name__}: {exc}"
            ) from exc
    if kind == FRAMED:
        # One copy (at most INLINE_LIMIT bytes) makes the rebuilt buffers writable.
        return unframe(bytearray(memoryview(data)[1:]))
    if kind == BULK:
        raise SerializationError("a bulk payload must be fetched with plait.wire.bulk")
    raise SerializationError(f"unknown payload kind {kind!r}")


def is_bulk(data: bytes) -> bool:
    """True when ``data`` describes a blob on the bulk data channel."""
    return data[:1] == BULK


# -- plain data: what a less trusted peer may send -------------------------------------

_PLAIN_ATOMS = (type(None), bool, int, float, str, bytes)
_PLAIN_CONTAINERS = (list, tuple, set, frozenset)


def check_plain(obj: Any, what: str = "value") -> None:
    """Raise SerializationError unless ``obj`` is plain data.

    Plain data is None, bools, numbers (not complex), str, bytes, and lists,
    tuples, sets and dicts of plain data: what :func:`loads_plain` accepts.
    """
    stack = [(obj, what)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, _PLAIN_ATOMS) and type(item) in _PLAIN_ATOMS:
            continue
        if type(item) in _PLAIN_CONTAINERS:
            stack.extend((x, f"an item of {where}") for x in item)
        elif type(item) is dict:
            for key, value in item.items():
                stack.append((key, f"a key of {where}"))
                stack.append((value, f"{where}[{key!r}]"))
        else:
            raise SerializationError(
                f"{where} is a {type(item).__name__}; only plain data (None, bool, int, "
                f"float, str, bytes, and lists, tuples, sets and dicts of them) may be sent"
            )


def dumps_plain(obj: Any, what: str = "value") -> bytes:
    """Pickle plain data (checked with :func:`check_plain`) for :func:`loads_plain`."""
    check_plain(obj, what)
    return pickle.dumps(obj, protocol=5)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"plain data may not load {module}.{name}")


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection meanwhile (in the whole process): making
    many acyclic objects at once (the records of a long history) would start
    full passes over everything the process holds, for nothing."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def loads_plain_many(data: bytes) -> Any:
    """:func:`loads_plain` of a large answer (many small objects): without
    garbage collections meanwhile."""
    with collector_paused():
        return loads_plain(data)


def loads_plain(data: bytes) -> Any:
    """Unpickle plain data; a pickle that would load any class is refused.

    Safe on bytes from a less trusted peer: without classes, unpickling can
    build only containers, strings and numbers, never run code.
    """
    import io

    return _PlainUnpickler(io.BytesIO(data)).load()
