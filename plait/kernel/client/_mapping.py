"""One mapper and one parallel function, for both clients.

``client.mapper(**options)`` returns a :class:`Mapper`: ``map(func,
*sequences)`` with those options fixed.  ``client.parallel(**options)``
returns a decorator making a :class:`ParallelFunction`, a function of one
element that maps itself over whole sequences.  How the map runs is the
client's business (its ``_map_with``): the MultiEngine client gives every
engine one block of the sequences, the TaskClient cuts them into
load-balanced tasks.  Either way each engine maps the function over its
chunk with :func:`plait.kernel.engine.shipped.map_chunk`, and the
sequences are prepared and cut the same way (:func:`sequences_of`,
:func:`cut`).
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Callable, Mapping
from typing import Any


class Mapper:
    """``map(func, *sequences)`` on ``client``, with ``options`` fixed.

    In a blocking client ``map`` returns the list of results (or what the
    options ask for: a PendingResult with ``block=False``); in an
    asynchronous one, a Deferred of it.
    """

    def __init__(self, client: Any, **options: Any):
        self.client = client
        self.options = dict(options)

    def map(self, func: Callable[..., Any], *sequences: Any) -> Any:
        """``map(func, *sequences)`` in parallel, with this mapper's options."""
        return self.client._map_with(func, sequences, self.options)

    def __repr__(self) -> str:
        options = " ".join(f"{name}={value!r}" for name, value in self.options.items())
        return f"<Mapper {options}>" if options else "<Mapper>"


class ParallelFunction:
    """A function of one element (of each sequence) applied to whole sequences.

    ``pf(xs, ys)`` and ``pf.map(xs, ys)`` are ``mapper.map(func, xs, ys)``.
    """

    def __init__(self, func: Callable[..., Any], mapper: Mapper):
        if not callable(func):
            raise TypeError(f"parallel() decorates a function, not a {type(func).__name__}")
        self.func = func
        self.mapper = mapper
        functools.update_wrapper(self, func)

    def __call__(self, *sequences: Any) -> Any:
        return self.mapper.map(self.func, *sequences)

    def map(self, *sequences: Any) -> Any:
        return self.mapper.map(self.func, *sequences)

    def __repr__(self) -> str:
        return f"<parallel function {getattr(self.func, '__qualname__', self.func)!r}>"


def decorator(mapper: Mapper) -> Callable[[Callable[..., Any]], ParallelFunction]:
    """What ``client.parallel(...)`` returns: ``f`` -> ``ParallelFunction(f, mapper)``."""

    def decorate(func: Callable[..., Any]) -> ParallelFunction:
        return ParallelFunction(func, mapper)

    return decorate


def _ndarray() -> type[Any] | None:
    numpy = sys.modules.get("numpy")
    return getattr(numpy, "ndarray", None)


def _sliceable(seq: Any) -> bool:
    ndarray = _ndarray()
    if isinstance(seq, (list, tuple, range, str, bytes, bytearray)):
        return True
    if ndarray is not None and isinstance(seq, ndarray):
        return seq.ndim > 0
    return hasattr(seq, "__len__") and hasattr(seq, "__getitem__") and not isinstance(seq, Mapping)


def sequences_of(func: Any, sequences: Any) -> tuple[list[Any], int]:
    """The sequences of ``map(func, *sequences)``, ready to be cut, and the map's length.

    Sequences that can be sliced (lists, tuples, ranges, strings, NumPy
    arrays...) are kept as they are; other iterables are read into lists.
    The shortest sequence sets the length, as for the builtin.  TypeError
    when ``func`` is not callable, there is no sequence, or one is not
    iterable.
    """
    if not callable(func):
        raise TypeError(f"map: the function is not callable: a {type(func).__name__}")
    if not sequences:
        raise TypeError("map needs at least one sequence")
    seqs = []
    for position, seq in enumerate(sequences):
        if not _sliceable(seq):
            try:
                seq = list(seq)
            except TypeError:
                raise TypeError(
                    f"map: argument {position + 2} is not iterable: a {type(seq).__name__}"
                ) from None
        seqs.append(seq)
    return seqs, min(len(s) for s in seqs)


def cut(seq: Any, start: int, stop: int) -> Any:
    """Items ``start:stop`` of a prepared sequence: a slice (a view for arrays), or a list."""
    try:
        return seq[start:stop]
    except (TypeError, KeyError):
        return list(itertools.islice(seq, start, stop))
