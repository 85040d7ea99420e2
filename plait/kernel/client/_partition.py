"""Splitting a sequence over engines (scatter) and joining it back (gather).

Only the block distribution (``dist='b'``) exists: engine ``i`` of ``n`` gets
one contiguous slice; slice lengths differ by at most one, the earlier ones
being the longer.  ``scatter('a', range(16))`` on four engines gives them
``[0, 1, 2, 3]``, ``[4, 5, 6, 7]``, ``[8, 9, 10, 11]`` and ``[12, 13, 14, 15]``.
When there are fewer items than engines, the last engines get empty parts.

What a part is, by the type of the sequence:

* ``list``: a list (a shallow copy of the slice);
* ``range``: a list, so that an engine sees ``[0, 1, 2, 3]`` as in the user
  guide, and not ``range(0, 4)``;
* ``tuple``, ``str``, ``bytes``, ``bytearray``: the same type;
* a NumPy array (of at least one dimension): a view of a block of rows
  (axis 0), never a copy;
* any other object with ``len()`` and slicing (a ``collections.deque``, a
  pandas object...): ``seq[lo:hi]``, or a list of the items when it cannot be
  sliced.

Mappings, sets, iterators and generators, and scalars are refused with a
TypeError that says what to pass instead.

With ``flatten=True`` a part holding exactly one item is replaced by that item
(``scatter('x', range(4), flatten=True)`` on four engines sets ``x = 0`` on
engine 0 and so on).

:func:`join` is the inverse: parts of one kind are joined into that kind (a
list, tuple, string, or one array by ``numpy.concatenate``), mixed lists and
tuples into a list.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator, Mapping, Set
from typing import Any

_PRESERVED = (tuple, str, bytes, bytearray)


def _a(noun: str) -> str:
    """``noun`` with its indefinite article: 'an int', 'a dict'."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def ndarray_type() -> type[Any] | None:
    """``numpy.ndarray`` if NumPy is loaded (no array can exist otherwise)."""
    numpy = sys.modules.get("numpy")
    return getattr(numpy, "ndarray", None)


def check_dist(dist: str) -> None:
    """ValueError unless ``dist`` is the block distribution ``'b'``."""
    if dist != "b":
        raise ValueError(
            f"unknown distribution {dist!r}: only the block distribution 'b' is supported"
        )


def _length(seq: Any) -> int:
    """``len(seq)`` for a sequence that can be partitioned; TypeError otherwise."""
    kind = type(seq).__name__
    if isinstance(seq, Mapping):
        raise TypeError(
            f"cannot partition {_a(kind)}: it is a mapping, not a sequence; "
            "pass a list such as list(d.items())"
        )
    if isinstance(seq, Set):
        raise TypeError(
            f"cannot partition {_a(kind)}: it has no order; pass a list such as sorted(s)"
        )
    ndarray = ndarray_type()
    if ndarray is not None and isinstance(seq, ndarray) and seq.ndim == 0:
        raise TypeError("cannot partition a 0-d array: it has no items")
    if isinstance(seq, Iterator):
        raise TypeError(
            f"cannot partition {_a(kind)}: an iterator has no length; pass list(...) of it"
        )
    try:
        return len(seq)
    except TypeError:
        raise TypeError(
            f"cannot partition {_a(kind)}: a list, tuple, range, string or array is needed"
        ) from None


def _check_count(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of parts must be a positive integer, not {n!r}")


def bounds(length: int, n: int, index: int) -> tuple[int, int]:
    """The ``(start, stop)`` of part ``index`` of ``n`` of a sequence of ``length`` items."""
    _check_count(n)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise IndexError(f"part index {index!r} is out of range for {n} parts (0 to {n - 1})")
    base, extra = divmod(length, n)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def _slice(seq: Any, start: int, stop: int) -> Any:
    if isinstance(seq, range):
        return list(seq[start:stop])
    if isinstance(seq, (list, *_PRESERVED)):
        return seq[start:stop]
    ndarray = ndarray_type()
    if ndarray is not None and isinstance(seq, ndarray):
        return seq[start:stop]  # basic slicing: a view
    try:
        return seq[start:stop]
    except (TypeError, KeyError):  # no slicing (a deque) or label indexing
        return list(itertools.islice(seq, start, stop))


def partition(
    seq: Any, n: int, index: int, *, flatten: bool = False, dist: str = "b"
) -> Any:
    """Part ``index`` (from 0) of ``seq`` cut into ``n`` blocks.

    ``flatten=True`` turns a one-item part into the item itself.  Raises
    TypeError for something that is not a sequence, ValueError for a bad
    ``n`` or ``dist``, IndexError for an ``index`` outside ``0..n-1``.
    """
    check_dist(dist)
    start, stop = bounds(_length(seq), n, index)
    part = _slice(seq, start, stop)
    if flatten and stop - start == 1:
        return part[0]
    return part


def partitions(seq: Any, n: int, *, flatten: bool = False, dist: str = "b") -> list[Any]:
    """All ``n`` parts of ``seq``, in order (see :func:`partition`)."""
    check_dist(dist)
    _check_count(n)
    length = _length(seq)
    parts = []
    for index in range(n):
        start, stop = bounds(length, n, index)
        part = _slice(seq, start, stop)
        parts.append(part[0] if flatten and stop - start == 1 else part)
    return parts


def _is_part(obj: Any) -> bool:
    ndarray = ndarray_type()
    if ndarray is not None and isinstance(obj, ndarray):
        return obj.ndim > 0
    return isinstance(obj, (list, range, *_PRESERVED))


def join(parts: Any, flatten: bool = False) -> Any:
    """Join ``parts`` (as gathered from the engines, in order) into one sequence.

    Parts that are all tuples, all strings or all bytes give a tuple, string
    or bytes; parts among which is a NumPy array give
    ``numpy.concatenate(parts)``; otherwise the result is a list.  With
    ``flatten=True`` a part that is not a sequence counts as one item (the
    inverse of ``partition(..., flatten=True)`` for sequences of scalars; a
    one-item part that was itself a list cannot be told from a part, and is
    joined as a part).  Without it, such a part is a TypeError.
    """
    if isinstance(parts, (str, bytes)) or not hasattr(parts, "__iter__"):
        raise TypeError(f"join needs a list of parts, not a {type(parts).__name__}")
    parts = list(parts)
    numpy = sys.modules.get("numpy")
    for i, part in enumerate(parts):
        if not _is_part(part):
            if flatten and numpy is not None and isinstance(part, numpy.generic):
                parts[i] = numpy.asarray([part])  # an item of a scattered array
            elif flatten:
                parts[i] = [part]
            else:
                raise TypeError(
                    f"cannot join part {i}: a {type(part).__name__} is not a sequence "
                    "(was it scattered with flatten=True? then gather with flatten=True)"
                )
    if numpy is not None and any(isinstance(p, numpy.ndarray) for p in parts):
        return numpy.concatenate(parts)
    if parts:
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
        if all(isinstance(p, (bytes, bytearray)) for p in parts):
            return type(parts[0])().join(parts)
        if all(isinstance(p, tuple) for p in parts):
            return tuple(itertools.chain.from_iterable(parts))
    return list(itertools.chain.from_iterable(parts))
