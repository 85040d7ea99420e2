"""MultiEngine client methods written only against its public methods.

:class:`MultiEngineHelpers` serves both flavours of the client: in the
blocking ``MultiEngineClient`` its methods block, in the asynchronous one
they return Deferreds, because they only call public client methods
(``push``, ``pull``, ``raw_map``...) and hand back what those return.

:class:`InteractiveMultiEngineClient` is for the blocking client only (its
methods need results, not Deferreds): ``len(mec)``, and ``with mec:``
blocks whose body runs on the engines (see :mod:`plait.kernel.client._remote`).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

from plait.kernel.client._mapping import Mapper, ParallelFunction, decorator
from plait.kernel.client._partition import check_dist
from plait.kernel.client._remote import (
    block_body,
    ipython_cell_lines,
    source_lines,
    strip_whitespace,
)
from plait.wire.errors import StopLocalExecution


class MultiEngineHelpers:
    """Parallel map, the parallel decorator, the dictionary interface and
    magics activation, for both client flavours."""

    targets: Any
    block: bool
    push: Callable[..., Any]
    pull: Callable[..., Any]
    raw_map: Callable[..., Any]

    def map(self, func: Callable, *sequences: Any, progress: bool | None = None) -> Any:
        """A parallel ``map(func, *sequences)``: a list, in order.

        The sequences are cut into one contiguous block per engine (of the
        ``targets`` attribute); each engine maps ``func`` over its block.
        As with the builtin, the shortest sequence sets the length.  With
        the ``block`` attribute False, a PendingResult.  No load balancing:
        see the task interface for that.  :meth:`mapper` gives a map with
        other options.  ``progress`` (the blocking client): a progress bar
        of the engines done, as ``raw_map`` shows it.
        """
        if progress is None:
            return self.mapper().map(func, *sequences)
        return self.raw_map(func, list(sequences), progress=progress)

    def mapper(self, dist: str = "b", targets: Any = None, block: bool | None = None) -> Mapper:
        """An object whose ``map(func, *sequences)`` maps in parallel.

        ``dist``: how sequences are cut (``'b'``, contiguous blocks, is the
        only one); ``targets``: the engines to use; ``block``: whether
        ``map`` waits for the result.  None means the client's attribute of
        the same name when ``map`` is called.
        """
        check_dist(dist)
        return Mapper(self, dist=dist, targets=targets, block=block)

    def _map_with(self, func: Callable, sequences: tuple, options: dict) -> Any:
        """What a :class:`Mapper` of this client runs: ``raw_map`` with its options."""
        return self.raw_map(func, list(sequences), **options)

    def parallel(self, dist: str = "b", targets: Any = None, block: bool | None = None
                 ) -> Callable[[Callable], ParallelFunction]:
        """A decorator turning ``f`` into a parallel function over sequences::

            @mec.parallel()
            def f(x, y):
                return x + y

            f(range(10), range(10))   # f(0, 0), f(1, 1), ... on the engines

        The options are those of :meth:`mapper`.
        """
        return decorator(self.mapper(dist=dist, targets=targets, block=block))

    def __setitem__(self, key: str, value: Any) -> None:
        """``mec['a'] = value``: push ``a`` to the engines of ``targets``."""
        if not isinstance(key, str):
            raise TypeError(f"engine variable names are str, not {type(key).__name__}")
        self.push({key: value})

    def __getitem__(self, key: str) -> Any:
        """``mec['a']``: pull ``a`` from the engines of ``targets`` (a list)."""
        if not isinstance(key, str):
            raise TypeError(f"engine variable names are str, not {type(key).__name__}")
        return self.pull(key)

    def activate(self) -> None:
        """Make this client the one the IPython magics use.

        ``%px``, ``%autopx`` and ``%result`` then run on this client, with
        its ``targets`` and ``block`` attributes.  In IPython this also
        loads the magics (as ``%load_ext plait`` does).
        """
        from plait.kernel.client import _magics

        _magics.activate(self)


class InteractiveMultiEngineClient:
    """Interactive conveniences of the blocking MultiEngine client."""

    with_context_result: Any = None
    get_ids: Callable[..., list[int]]
    execute: Callable[..., Any]

    def __len__(self) -> int:
        """The number of registered engines."""
        return len(self.get_ids())

    def __bool__(self) -> bool:  # a client is true even with no engines
        return True

    __iter__ = None  # mec['a'] is a pull, not an item: a client is not iterable

    def findsource_file(self, frame: types.FrameType) -> str:
        """The remote code of the ``with`` block at ``frame``'s line, from its file."""
        lines = source_lines(frame)
        if not lines:
            raise ValueError(
                f"cannot find the source of the with block: {frame.f_code.co_filename!r} "
                "is not a readable file"
            )
        return strip_whitespace(block_body(lines, frame.f_lineno))

    def findsource_ipython(self, frame: types.FrameType) -> str:
        """The remote code of the ``with`` block at ``frame``'s line, from the
        IPython cell being run."""
        lines = ipython_cell_lines()
        if not lines:
            raise ValueError("cannot find the source of the with block: no IPython cell")
        return strip_whitespace(block_body(lines, frame.f_lineno))

    def __enter__(self) -> Any:
        """Run the body of the block, after its ``remote()`` call, on the engines.

        The result of that ``execute`` (a PendingResult when ``block`` is
        False) is kept as ``with_context_result``.
        """
        frame = sys._getframe(1)
        if source_lines(frame):
            code = self.findsource_file(frame)
        else:
            code = self.findsource_ipython(frame)
        self.with_context_result = self.execute(code) if code else None
        return self

    def __exit__(self, etype: type | None, value: BaseException | None, tb: Any) -> bool:
        return etype is not None and issubclass(etype, StopLocalExecution)
