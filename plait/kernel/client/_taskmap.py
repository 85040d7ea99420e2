"""The load-balanced ``map`` of the TaskClient.

``tc.map(f, *sequences)`` returns ``list(map(f, *sequences))`` computed on the
engines by tasks.  One task per element would cost a message per element;
one task per engine would not balance uneven work.  So the elements are cut
into *chunks*, one :class:`~plait.kernel.client._tasks.MapTask` each (running
:func:`~plait.kernel.engine.shipped.map_chunk` on its part of each
sequence, as the MultiEngine map does on its blocks), sized by
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

``tc.mapper(chunksize=None, **options)`` and ``@tc.parallel(...)`` give the
:class:`~plait.kernel.client._mapping.Mapper` and
:class:`~plait.kernel.client._mapping.ParallelFunction` both clients share.
``options`` are the task options that make sense for a map: ``retries``,
``clear_before``, ``clear_after``, ``depend`` and ``timeout``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from plait.kernel.client._base import all_of
from plait.kernel.client._progress import Tally, tally_groups
from plait.kernel.client._tasks import MapTask
from plait.kernel.engine.shipped import map_chunk
from plait.wire.serialized import Serialized

#: Each chunk takes 1 / (CHUNK_FACTOR * engines) of the elements left.
CHUNK_FACTOR = 4
#: No chunk is smaller than len / (TAIL_FRACTION * engines) elements.
TAIL_FRACTION = 64
MAP_OPTIONS = ("retries", "clear_before", "clear_after", "depend", "timeout")


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


def check_map_options(chunksize: int | None, options: dict) -> None:
    """TypeError (an unknown option) or ValueError (a bad chunksize), in that order."""
    _check_options(options)
    if chunksize is not None:
        chunk_sizes(1, 1, chunksize)  # validates


def map_tasks(client: Any, function: Callable[..., Any], sequences: tuple,
              chunksize: int | None, options: dict, tally: Tally | None = None
              ) -> defer.Deferred:
    """(Twisted) A Deferred firing with ``list(map(function, *sequences))``.

    ``client`` is an AsyncTaskClient.  Fails with TypeError / ValueError for
    bad arguments (nothing is submitted then), else with the exception of the
    first chunk that failed.  ``tally`` (if any) counts the chunks (tasks)
    done: their results are then fetched in runs of chunks (at most
    :data:`~plait.kernel.client._progress.TALLY_STEPS`), each as it finishes.
    """
    try:
        if not callable(function):
            raise TypeError(f"map needs a callable, not {function!r}")
        if not sequences:
            raise TypeError("map needs at least one sequence")
        _check_options(options)
        items = list(zip(*sequences, strict=False))  # as the builtin map reads them
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
        sizes = chunk_sizes(len(items), engines, chunksize)
        start = 0
        if tally is not None:
            tally.total = len(sizes)
        try:
            for size in sizes:
                columns = zip(*items[start:start + size], strict=True)  # one per sequence
                task = MapTask(map_chunk, (shipped, *columns), **options)
                ids.append((yield client.run(task)))
                start += size
            if tally is None:
                results = yield client._results_of(ids, True, keep=False)
            else:  # (fetched in at most TALLY_STEPS groups, each counted as it comes)
                groups = yield all_of([
                    client._results_of(group, True, keep=False).addCallback(tally.passing)
                    for group in tally_groups(ids)])
                results = [chunk for group in groups for chunk in group]
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
