"""Load-balanced ``map``, mappers and parallel functions of the TaskClient.

``tc.map(f, *sequences)`` returns ``list(map(f, *sequences))`` computed on the
engines by tasks.  One task per element would cost a message per element;
one task per engine would not balance uneven work.  So the elements are cut
into *chunks*, one :class:`~plait.kernel._tasks.MapTask` each, sized by
*guided self-scheduling*: each chunk takes ``1 / (CHUNK_FACTOR * engines)``
of the elements still left, so chunks start large (few messages for the
bulk of the work) and shrink toward the end (the last ones are small, so
whichever engine frees up first takes them and all engines finish close
together).  No chunk is smaller than ``len / (TAIL_FRACTION * engines)``
(nor than one element), which bounds the number of tasks to about
``CHUNK_FACTOR * engines * (1 + ln(TAIL_FRACTION / CHUNK_FACTOR))``,
whatever the length: about 15 tasks per engine.  ``chunksize=k`` makes
every chunk ``k`` elements instead (``chunksize=1``: one task per element,
the finest balance).

The chunks are submitted together and collected with one call; a chunk that
fails makes ``map`` raise its exception (the first failing chunk in element
order) once every chunk has finished.  The tasks of a map are cleared from
the controller once collected; when ``map`` fails before that (a chunk that
cannot be submitted, a lost connection), the chunks already submitted are
aborted and cleared before the error is raised, as far as the controller
can still be reached.

``tc.mapper(chunksize=None, **options)`` returns a :class:`TaskMapper`
whose ``map`` uses those settings; ``@tc.parallel(...)`` turns a function of
one element into a :class:`TaskParallelFunction` applied to whole sequences.
``options`` are the task options that make sense for a map: ``retries``,
``clear_before``, ``clear_after``, ``depend`` and ``timeout``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from plait.kernel._serialized import Serialized
from plait.kernel._tasks import MapTask

#: Each chunk takes 1 / (CHUNK_FACTOR * engines) of the elements left.
CHUNK_FACTOR = 4
#: No chunk is smaller than len / (TAIL_FRACTION * engines) elements.
TAIL_FRACTION = 64
MAP_OPTIONS = ("retries", "clear_before", "clear_after", "depend", "timeout")


def run_chunk(function: Callable[..., Any], chunk: list[tuple]) -> list[Any]:
    """Run on an engine: ``function`` applied to each argument tuple of ``chunk``."""
    return [function(*args) for args in chunk]


def chunk_sizes(n: int, engines: int, chunksize: int | None = None) -> list[int]:
    """The sizes of the chunks ``n`` elements are cut into (see the module doc)."""
    if chunksize is not None:
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, not {chunksize!r}")
        return [min(chunksize, n - i) for i in range(0, n, chunksize)]
    engines = max(1, engines)
    smallest = max(1, n // (TAIL_FRACTION * engines))
    sizes = []
    left = n
    while left > 0:
        size = min(left, max(smallest, math.ceil(left / (CHUNK_FACTOR * engines))))
        sizes.append(size)
        left -= size
    return sizes


def _check_options(options: dict) -> None:
    unknown = sorted(set(options) - set(MAP_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown map option(s) {', '.join(unknown)}; map takes chunksize and "
            f"{', '.join(MAP_OPTIONS)}"
        )


def map_tasks(client: Any, function: Callable[..., Any], sequences: tuple,
              chunksize: int | None, options: dict) -> defer.Deferred:
    """(Twisted) A Deferred firing with ``list(map(function, *sequences))``.

    ``client`` is an AsyncTaskClient.  Fails with TypeError / ValueError for
    bad arguments (nothing is submitted then), else with the exception of the
    first chunk that failed.
    """
    try:
        if not callable(function):
            raise TypeError(f"map needs a callable, not {function!r}")
        if not sequences:
            raise TypeError("map needs at least one sequence")
        _check_options(options)
        items = list(zip(*sequences, strict=False))
        if chunksize is not None:
            chunk_sizes(1, 1, chunksize)  # validates
    except Exception:
        return defer.fail()
    if not items:
        return defer.succeed([])

    @defer.inlineCallbacks
    def go() -> Any:
        engines = 1
        if chunksize is None:
            engines = (yield client.info())["engines"]
        shipped = Serialized.of(function)  # pickled once for all the chunks
        ids: list[int] = []
        start = 0
        try:
            for size in chunk_sizes(len(items), engines, chunksize):
                task = MapTask(run_chunk, args=(shipped, items[start:start + size]), **options)
                ids.append((yield client.run(task)))
                start += size
            results = yield client._results_of(ids, True, keep=False)
        except BaseException:
            yield _discard(client, ids)
            raise
        client.clear(ids).addErrback(lambda _: None)  # best effort: free the controller
        values: list[Any] = []
        for result in results:
            result.raise_exception()
            values.extend(result.results)
        return values

    return go()


@defer.inlineCallbacks
def _discard(client: Any, ids: list[int]) -> Any:
    """Abort and clear the tasks ``ids`` of a map that failed; errors are ignored
    (a task finished already, or the controller is out of reach)."""
    if not ids:
        return
    aborts = [defer.maybeDeferred(client.abort, taskid) for taskid in ids]  # pipelined
    yield defer.DeferredList(aborts, consumeErrors=True)
    try:
        yield client.clear(ids)
    except Exception:
        pass


class TaskMapper:
    """A load-balanced ``map`` with fixed settings (from ``tc.mapper()``)."""

    def __init__(self, client: Any, chunksize: int | None = None, **options: Any):
        _check_options(options)
        if chunksize is not None:
            chunk_sizes(1, 1, chunksize)  # validates
        self.client = client
        self.chunksize = chunksize
        self.options = options

    def map(self, function: Callable[..., Any], *sequences: Any) -> Any:
        """``list(map(function, *sequences))`` computed by tasks (a Deferred
        of it for an asynchronous client)."""
        return self.client.map(function, *sequences, chunksize=self.chunksize, **self.options)

    def __repr__(self) -> str:
        return f"<TaskMapper chunksize={self.chunksize} options={self.options}>"


class TaskParallelFunction:
    """A function of one element, applied to whole sequences by tasks.

    ``pf(seq)`` and ``pf.map(seq)`` return ``[f(x) for x in seq]``; with
    several sequences, ``f`` takes one element of each.
    """

    def __init__(self, mapper: TaskMapper, function: Callable[..., Any]):
        self.mapper = mapper
        self.function = function
        functools.update_wrapper(self, function)

    def __call__(self, *sequences: Any) -> Any:
        return self.mapper.map(self.function, *sequences)

    def map(self, *sequences: Any) -> Any:
        return self.mapper.map(self.function, *sequences)


class TaskMapMixin:
    """``mapper`` and ``parallel`` for both TaskClients, written with ``map``."""

    def mapper(self, chunksize: int | None = None, **options: Any) -> TaskMapper:
        """A :class:`TaskMapper` whose ``map`` uses ``chunksize`` and the task
        ``options`` (retries, clear_before, clear_after, depend, timeout)."""
        return TaskMapper(self, chunksize, **options)

    def parallel(self, chunksize: int | None = None, **options: Any
                 ) -> Callable[[Callable[..., Any]], TaskParallelFunction]:
        """A decorator making a function of one element a :class:`TaskParallelFunction`::

            @tc.parallel()
            def f(x):
                return 10.0 * x ** 4

            f(range(32))   # load balanced over the engines
        """
        mapper = self.mapper(chunksize, **options)

        def decorate(function: Callable[..., Any]) -> TaskParallelFunction:
            return TaskParallelFunction(mapper, function)

        return decorate
