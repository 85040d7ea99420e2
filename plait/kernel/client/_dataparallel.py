"""Data-parallel operations of the MultiEngine client: scatter, gather, map.

Each is one round trip to the engines (plus, when ``targets`` is
``'all'``, one to the controller for the engine ids):

* ``scatter`` cuts the sequence into one contiguous part per engine
  (:mod:`plait.kernel.client._partition`; NumPy arrays into views, not copies) and
  sends every engine its own part in one ``push_each``.  Large parts travel
  on the bulk data channel, uploaded in parallel.
* ``gather`` pulls the parts and joins them.
* ``raw_map`` sends every engine its block of the sequences together with
  the function, in one ``apply_each``; each engine maps the function over
  its block (:func:`plait.kernel.engine.shipped.map_chunk`), and the blocks
  of results are joined.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer

from plait.interfaces.multiengine import targets_to_wire
from plait.kernel.client._base import all_of, asynchronous, counted
from plait.kernel.client._partition import bounds, check_dist, join, ndarray_type, partitions
from plait.kernel.client._pending import PendingResult
from plait.kernel.client._progress import Tally
from plait.kernel.engine.shipped import map_chunk
from plait.wire.errors import EnginesChanged, SerializationError
from plait.wire.serialized import Serialized


def check_name(key: Any, method: str) -> None:
    """TypeError/ValueError unless ``key`` can name an engine variable."""
    if not isinstance(key, str):
        raise TypeError(f"{method}: a variable name is a str, not a {type(key).__name__}")
    if not key.isidentifier():
        raise ValueError(f"{method}: {key!r} is not a valid Python name")


def _sequence(seq: Any, position: int) -> Any:
    """``seq`` if it can be cut in blocks, else the list of its items."""
    ndarray = ndarray_type()
    if isinstance(seq, (list, tuple, range, str, bytes, bytearray)):
        return seq
    if ndarray is not None and isinstance(seq, ndarray) and seq.ndim > 0:
        return seq
    if hasattr(seq, "__len__") and hasattr(seq, "__getitem__") and not isinstance(seq, Mapping):
        return seq
    try:
        return list(seq)
    except TypeError:
        raise TypeError(
            f"map: argument {position + 2} is not iterable: a {type(seq).__name__}"
        ) from None


def _cut(seq: Any, start: int, stop: int) -> Any:
    """Items ``start:stop`` of ``seq``: a slice (a view for arrays), or a list."""
    try:
        return seq[start:stop]
    except (TypeError, KeyError):
        return list(itertools.islice(seq, start, stop))


def _raw(replies: Any) -> Any:
    return replies


def _concat(blocks: list) -> list:
    return list(itertools.chain.from_iterable(blocks))


def _done(value: Any, description: str) -> PendingResult:
    """A PendingResult that is ready at once with ``value``."""
    return PendingResult(lambda block: defer.succeed(value), None, description)


def _one() -> defer.Deferred:
    return defer.succeed(1)


class DataParallelMixin:
    """scatter, gather and raw_map of the asynchronous MultiEngine client.

    Relies on the client's plumbing: ``_tb``, ``_call``, ``_engine_call``,
    ``_payload``, ``_per_engine`` and ``get_ids``.
    """

    get_ids: Callable[..., defer.Deferred]
    _engine_ids: list[int] | None
    _tb: Callable[[Any, bool | None], tuple[Any, bool]]
    _call: Callable[..., defer.Deferred]
    _engine_call: Callable[..., defer.Deferred]
    _payload: Callable[..., defer.Deferred]
    _per_engine: Callable[..., Callable]

    def _target_ids(self, targets: Any) -> defer.Deferred:
        """A Deferred with ``(ids, everyone)``: the target engine ids, in order,
        and whether they stand for all the engines (``targets='all'``).

        For ``'all'`` the ids last seen are used (the controller checks them);
        the controller is asked only when none were seen yet.
        """
        try:
            everything, ids = targets_to_wire(targets)
        except TypeError:
            return defer.fail()
        if everything:
            if self._engine_ids:
                return defer.succeed((list(self._engine_ids), True))
            return self.get_ids().addCallback(lambda ids: (ids, True))
        if len(set(ids)) != len(ids):
            return defer.fail(ValueError(f"targets name an engine more than once: {ids}"))
        return defer.succeed((ids, False))

    @defer.inlineCallbacks
    def _on_targets(self, targets: Any, send: Callable[[list[int], bool], defer.Deferred]
                    ) -> Any:
        """``send(ids, everyone)``; again, once, if the engines changed meanwhile."""
        for attempt in range(2):
            ids, everyone = yield self._target_ids(targets)
            try:
                result = yield send(ids, everyone)
            except EnginesChanged as changed:
                self._engine_ids = changed.ids
                if attempt:
                    raise
                continue
            return result

    def _each(self, method: str, label: str, objects: list[Any], ids: list[int],
              everyone: bool, block: bool, finish: Callable) -> defer.Deferred:
        """Send ``objects[k]`` to engine ``ids[k]`` with ``push_each``/``apply_each``."""

        @defer.inlineCallbacks
        def run() -> Any:
            prepared = yield all_of([self._payload(obj, _one, label) for obj in objects])
            payloads = {i: payload for i, (payload, _) in zip(ids, prepared, strict=True)}
            uploads = [sending for _, sending in prepared if sending is not None]
            try:
                result = yield self._call(method, payloads, everyone, block=block, finish=finish)
            except Exception:
                for sending in uploads:  # the controller dropped these: ignore their end
                    sending.addErrback(lambda f: None)
                raise
            yield all_of(uploads)
            return result

        return run()

    @asynchronous
    @defer.inlineCallbacks
    def scatter(self, key: str, seq: Any, dist: str = "b", flatten: bool = False,
                targets: Any = None, block: bool | None = None) -> Any:
        """Cut ``seq`` into one contiguous part per engine and push it as ``key``.

        Engine ``k`` of the targets (in order) gets part ``k``; part lengths
        differ by at most one, the first parts being the longer.  Lists,
        ranges (as lists), tuples, strings and NumPy arrays (blocks of rows,
        sent without copies) can be scattered.  ``flatten=True`` sends a
        one-item part as the item itself.  Returns ``[None, ...]``.
        """
        check_name(key, "scatter")
        check_dist(dist)
        targets, block = self._tb(targets, block)

        def send(ids: list[int], everyone: bool) -> defer.Deferred:
            if not ids:
                raise ValueError("scatter: there are no engines to scatter to")
            parts = partitions(seq, len(ids), flatten=flatten, dist=dist)
            return self._each(
                "push_each", "scatter", [{key: part} for part in parts], ids, everyone,
                block, self._per_engine("scatter"),
            )

        result = yield self._on_targets(targets, send)
        return result

    @asynchronous
    def gather(self, key: str, dist: str = "b", flatten: bool = False, targets: Any = None,
               block: bool | None = None) -> defer.Deferred:
        """Pull ``key`` from each engine and join the parts into one sequence.

        The inverse of :meth:`scatter` (with the same ``flatten``): lists
        give a list, tuples a tuple, arrays one array.
        """
        try:
            check_name(key, "gather")
            check_dist(dist)
        except (TypeError, ValueError):
            return defer.fail()

        def shape(values: list) -> Any:
            return join([v[0] for v in values], flatten=flatten)

        return self._engine_call(
            "pull", [key], targets=targets, block=block, shape=shape, label="gather"
        )

    @asynchronous
    @counted("map")
    @defer.inlineCallbacks
    def raw_map(self, func: Callable, seqs: Any, dist: str = "b", targets: Any = None,
                block: bool | None = None, *, tally: Tally | None = None) -> Any:
        """``map(func, seqs[0], seqs[1], ...)`` in parallel: a list.

        The sequences are cut into one block per engine; each engine maps
        ``func`` over its block, in one round trip.  The shortest sequence
        sets the length.  Iterables without a length are read into lists.
        With ``tally`` (the blocking client's ``progress=``) it counts the
        engines done: once all are, or, when the bar was asked for, as each
        engine's block comes back (a round trip to each engine then).
        """
        if not callable(func):
            raise TypeError(f"map: the function is not callable: a {type(func).__name__}")
        check_dist(dist)
        if not isinstance(seqs, (list, tuple)):
            raise TypeError("raw_map takes the sequences in a list: raw_map(f, [xs, ys])")
        if not seqs:
            raise TypeError("map needs at least one sequence")
        seqs = [_sequence(s, k) for k, s in enumerate(seqs)]
        length = min(len(s) for s in seqs)
        targets, block = self._tb(targets, block)
        try:
            function = Serialized.of(func)  # pickled once for every engine
        except SerializationError as exc:
            raise SerializationError(f"map: cannot send the function: {exc}") from None

        def send(ids: list[int], everyone: bool) -> Any:
            if not ids:
                raise ValueError("map: there are no engines to map on")
            n = min(len(ids), length)
            if n == 0:
                return [] if block else _done([], "map")
            calls: list[tuple[Callable[..., Any], tuple, dict]] = []
            for index in range(n):
                start, stop = bounds(length, n, index)
                calls.append((map_chunk, (function, *[_cut(s, start, stop) for s in seqs]), {}))
            finish = self._per_engine("map", _concat)
            if tally is not None and block:
                tally.total = n
                if tally.asked:
                    return self._each_counted(calls, ids[:n], finish, tally,
                                              everyone and n == len(ids))
            d = self._each("apply_each", "map", calls, ids[:n], everyone and n == len(ids),
                           block, finish)
            if tally is not None and block:
                d.addCallback(tally.passing, n)
            return d

        result = yield self._on_targets(targets, send)
        return result

    @defer.inlineCallbacks
    def _each_counted(self, calls: list, ids: list[int], finish: Callable, tally: Tally,
                      everyone: bool) -> Any:
        """``apply_each`` of ``calls`` one engine at a time (all at once), each
        counted in ``tally`` as it comes back; their replies then finished
        together, as one ``apply_each`` would have been.  ``everyone``: the
        calls are for all the engines, which are asked for first (EnginesChanged,
        nothing run, when they are not ``ids``)."""
        if everyone:
            now = yield self.get_ids()  # (remembered: a retry uses them)
            if sorted(now) != sorted(ids):
                raise EnginesChanged(f"map: the engines are now {sorted(now)}", now)
        each = [self._each("apply_each", "map", [call], [engine_id], False, True, _raw)
                .addCallback(tally.passing, 1)
                for call, engine_id in zip(calls, ids, strict=True)]
        replies = yield all_of(each)
        result = yield finish([reply for engine in replies for reply in engine])
        return result
