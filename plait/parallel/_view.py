"""Views: what a Client's engines run, and how.

A :class:`DirectView` addresses engines by id: each call runs on every
engine of its ``targets``, as a task *pinned* to that engine (a list of
results, or one result when ``targets`` is one id).  A
:class:`LoadBalancedView` lets the controller's scheduler choose: each call
is one task, with ``retries``, graph dependencies (``after``, ``follow``),
a ``timeout`` for its dependencies and a choice of ``targets``.  Both share
:class:`View`: ``apply`` (blocking or not, after the ``block`` flag),
``apply_sync``, ``apply_async``, ``map`` and its twins, ``parallel()``,
``remote()``, flags (``set_flags``, ``temp_flags``), and the Client's
``abort``, ``wait``, ``get_result``, ``queue_status`` and ``shutdown``
limited to the view.
"""

from __future__ import annotations

import builtins
import collections
import concurrent.futures
import contextlib
import functools
import sys
import tokenize
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from plait.kernel.client._dataparallel import _cut, _sequence
from plait.kernel.client._mapping import Mapper, ParallelFunction, decorator
from plait.kernel.client._partition import bounds, check_dist, join, partitions
from plait.kernel.client._taskmap import check_map_options, chunk_sizes
from plait.kernel.engine import shipped
from plait.parallel._asyncresult import AsyncMapResult, AsyncResult
from plait.parallel._dependency import graph_dependency
from plait.wire.errors import SerializationError
from plait.wire.serialize import PICKLERS
from plait.wire.serialized import Serialized
from plait.wire.task import TaskSpec


def _name(function: Any) -> str:
    return getattr(function, "__name__", None) or type(function).__name__


class View:
    """What both kinds of view share (see the module documentation)."""

    _flag_names: tuple[str, ...] = ("block", "track", "targets")

    def __init__(self, client: Any, targets: Any = None, block: bool | None = None):
        self.client = client
        self.block = client.block if block is None else bool(block)
        self.track = False
        self.targets = targets
        self._pickler = "cloudpickle"
        self.history: list[str] = []

    # -- flags -----------------------------------------------------------------------------
    def set_flags(self, **flags: Any) -> None:
        """Set flags (``block``, ``targets``...; see each view) for later calls."""
        for name, value in flags.items():
            if name not in self._flag_names:
                raise KeyError(f"{type(self).__name__} has no flag {name!r}; its flags: "
                               f"{', '.join(self._flag_names)}")
            if name == "targets":
                self._check_targets(value)
            setattr(self, name, value)

    @contextlib.contextmanager
    def temp_flags(self, **flags: Any) -> Iterator[View]:
        """``with view.temp_flags(block=True):`` the flags, for the calls in the block."""
        saved = {name: getattr(self, name) for name in flags}
        self.set_flags(**flags)
        try:
            yield self
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    def _check_targets(self, targets: Any) -> None:
        pass

    @property
    def executor(self) -> Any:
        """This view as a :class:`concurrent.futures.Executor` (a new
        :class:`~plait.parallel._executor.ViewExecutor`; ``view.executor()``
        gives the same: calling it returns itself)."""
        from plait.parallel._executor import ViewExecutor

        return ViewExecutor(self)

    # -- calls -----------------------------------------------------------------------------
    def apply(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``f(*args, **kwargs)`` remotely: the result if ``block``, else an AsyncResult."""
        ar = self._apply(f, args, kwargs)
        return ar.get() if self.block else ar

    def apply_async(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> AsyncResult:
        """Call ``f(*args, **kwargs)`` remotely; an AsyncResult at once."""
        return self._apply(f, args, kwargs)

    def apply_sync(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``f(*args, **kwargs)`` remotely and wait: the result."""
        return self._apply(f, args, kwargs).get()

    def map(self, f: Callable[..., Any], *sequences: Any, block: bool | None = None,
            progress: bool | None = None, **options: Any) -> Any:
        """A parallel ``map(f, *sequences)``: a list if ``block``, else an AsyncMapResult.
        ``progress``: while it blocks, a progress bar (as :meth:`AsyncResult.wait`'s)."""
        ar = self._map(f, sequences, **options)
        return ar.get(progress=progress) if (self.block if block is None else block) else ar

    def map_async(self, f: Callable[..., Any], *sequences: Any, **options: Any
                  ) -> AsyncMapResult:
        return self._map(f, sequences, **options)

    def map_sync(self, f: Callable[..., Any], *sequences: Any, progress: bool | None = None,
                 **options: Any) -> list[Any]:
        return self._map(f, sequences, **options).get(progress=progress)

    def imap(self, f: Callable[..., Any], *sequences: Any, ordered: bool = True,
             **options: Any) -> Iterator[Any]:
        """Iterate over ``map(f, *sequences)`` while the results arrive."""
        return iter(self._map(f, sequences, ordered=ordered, **options))

    def _map_with(self, f: Callable[..., Any], sequences: tuple, options: dict) -> Any:
        """What a Mapper of this view runs (see ``parallel``)."""
        return self.map(f, *sequences, **options)

    def parallel(self, dist: str = "b", block: bool | None = None, **flags: Any
                 ) -> Callable[[Callable[..., Any]], ParallelFunction]:
        """A decorator: ``f`` of one element becomes a ParallelFunction over sequences."""
        check_dist(dist)
        return decorator(Mapper(self, block=block, **flags))

    def remote(self, block: bool | None = None, **flags: Any
               ) -> Callable[[Callable[..., Any]], RemoteFunction]:
        """A decorator: calling the function calls it remotely, through this view."""

        def decorate(f: Callable[..., Any]) -> RemoteFunction:
            return RemoteFunction(self, f, block, **flags)

        return decorate

    # -- what the Client offers, for this view ---------------------------------------------
    def abort(self, jobs: Any = None, targets: Any = None, block: bool | None = None) -> None:
        """Abort tasks (those of this view not finished, when ``jobs`` is None)."""
        self.client.abort(self.history if jobs is None else jobs)

    def wait(self, jobs: Any = None, timeout: float | None = -1,
             progress: bool | None = None) -> bool:
        """Wait for tasks (those of this view, when ``jobs`` is None); whether all are
        done.  ``progress``: as :meth:`Client.wait`'s."""
        return self.client.wait(self.history if jobs is None else jobs, timeout,
                                progress=progress)

    def get_result(self, indices_or_msg_ids: Any = None, block: bool | None = None,
                   owner: bool = False) -> AsyncResult:
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        if isinstance(indices_or_msg_ids, int):
            indices_or_msg_ids = self.history[indices_or_msg_ids]
        return self.client.get_result(indices_or_msg_ids, block, owner)

    def queue_status(self, targets: Any = None, verbose: bool = False) -> dict:
        return self.client.queue_status(targets if targets is not None else self.targets,
                                        verbose)

    def shutdown(self, targets: Any = None, restart: bool = False, hub: bool = False,
                 block: bool | None = None) -> None:
        self.client.shutdown(targets if targets is not None else self.targets, restart, hub)

    def spin(self) -> None:
        """Nothing to do: results arrive by themselves."""

    @property
    def outstanding(self) -> set[str]:
        """The msg_ids of this view's tasks not finished yet."""
        return set(self.history) & self.client.outstanding

    # -- submitting --------------------------------------------------------------------------
    def _submit(self, specs: list[TaskSpec], fname: str, single: bool = False,
                mapping: bool = False, ordered: bool = True,
                joiner: Callable[[list], Any] | None = None, method: str = "apply"
                ) -> AsyncResult:
        ar = self.client._submit(specs, fname, single=single, mapping=mapping,
                                 ordered=ordered, pickler=self._pickler, joiner=joiner,
                                 method=method)
        self.history.extend(ar.msg_ids)
        return ar

    def _apply(self, f: Callable[..., Any], args: tuple, kwargs: dict) -> AsyncResult:
        raise NotImplementedError

    def _map(self, f: Callable[..., Any], sequences: tuple, chunksize: int | None = None,
             ordered: bool = True, **options: Any) -> AsyncMapResult:
        return self._chunked(shipped.map_chunk, f, sequences, chunksize, ordered, options,
                             "map")

    def _call_with(self, f: Callable[..., Any], sequences: tuple, options: dict) -> Any:
        """What calling a ParallelFunction of this view runs: ``f`` called on each
        chunk of the sequences (not on each element: that is its ``map``), the
        chunks' results joined."""
        options = dict(options)
        block = options.pop("block", None)
        ar = self._chunked(shipped.call_chunk, f, sequences, options.pop("chunksize", None),
                           options.pop("ordered", True), options, "parallel",
                           joiner=functools.partial(join, flatten=True))
        return ar.get() if (self.block if block is None else block) else ar

    def _chunked(self, helper: Callable[..., Any], f: Callable[..., Any], sequences: tuple,
                 chunksize: int | None, ordered: bool, options: dict, method: str,
                 joiner: Callable[[list], Any] | None = None) -> AsyncMapResult:
        """Cut ``sequences`` into chunks (after :meth:`_plan`), each one task running
        ``helper(f, *chunk's slices)``."""
        if options:
            raise TypeError(f"{type(self).__name__}.map takes no options {sorted(options)}; "
                            f"it takes {self._map_options}")
        if not callable(f):
            raise TypeError(f"map needs a callable, not a {type(f).__name__}: {f!r}")
        if not sequences:
            raise TypeError("map needs at least one sequence")
        check_map_options(chunksize, {})
        seqs = [_sequence(s, k) for k, s in enumerate(sequences)]
        length = min(len(s) for s in seqs)
        try:
            function = Serialized.of(f)  # pickled once for all the chunks
        except SerializationError as exc:
            raise SerializationError(f"map: cannot send the function: {exc}") from None
        specs = [self._chunk_spec(helper, (function, *[_cut(s, start, stop) for s in seqs]),
                                  target)
                 for start, stop, target in self._plan(length, chunksize)]
        result = self._submit(specs, _name(f), mapping=True, ordered=ordered, joiner=joiner,
                              method=method)
        assert isinstance(result, AsyncMapResult)
        return result

    _map_options = "block and ordered"

    def _plan(self, length: int, chunksize: int | None) -> list[tuple[int, int, int | None]]:
        """The chunks of a map of ``length`` elements: ``(start, stop, engine or None)``."""
        raise NotImplementedError

    def _chunk_spec(self, helper: Callable[..., Any], args: tuple, target: int | None
                    ) -> TaskSpec:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.targets!r}>"


class RemoteFunction:
    """A function called remotely through a view (what ``view.remote()`` makes)."""

    def __init__(self, view: View, function: Callable[..., Any], block: bool | None = None,
                 **flags: Any):
        if not callable(function):
            raise TypeError(f"remote() decorates a function, not a {type(function).__name__}")
        self.view = view
        self.function = function
        self.block = block
        self.flags = flags

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        block = self.view.block if self.block is None else self.block
        with self.view.temp_flags(**self.flags):
            ar = self.view._apply(self.function, args, kwargs)
        return ar.get() if block else ar

    def __repr__(self) -> str:
        return f"<remote function {_name(self.function)!r}>"


class DirectView(View):
    """Engines by id: each call runs on every engine of ``targets`` ('all', an
    id, or a list of ids)."""

    def __init__(self, client: Any, targets: Any = "all", block: bool | None = None):
        super().__init__(client, targets, block)
        self._check_targets(targets)

    def _check_targets(self, targets: Any) -> None:
        self.client._engine_ids(targets)  # raises for bad targets

    def _engines(self, targets: Any = None) -> tuple[list[int], bool]:
        """The target engine ids, and whether the result is one value (an int target)."""
        targets = self.targets if targets is None else targets
        return self.client._engine_ids(targets), isinstance(targets, int)

    def _on_each(self, make: Callable[[int], TaskSpec], fname: str, targets: Any = None,
                 **kwargs: Any) -> AsyncResult:
        ids, single = self._engines(targets)
        return self._submit([make(engine_id) for engine_id in ids], fname, single=single,
                            **kwargs)

    def _result(self, ar: AsyncResult, block: bool | None) -> Any:
        return ar.get() if (self.block if block is None else block) else ar

    # -- calls -----------------------------------------------------------------------------
    def _apply(self, f: Callable[..., Any], args: tuple, kwargs: dict) -> AsyncResult:
        if not callable(f):
            raise TypeError(f"apply needs a callable, not a {type(f).__name__}")
        return self._on_each(
            lambda e: TaskSpec.call(f, args, kwargs, targets=(e,), pinned=True), _name(f))

    def execute(self, code: str, silent: bool = True, targets: Any = None,
                block: bool | None = None) -> Any:
        """Run Python source on the engines: an AsyncResult, finished when
        blocking (its errors raised then), as ipyparallel's (the output is in
        its metadata: ``ar.stdout``, ``ar.display_outputs()``)."""
        if not isinstance(code, str):
            raise TypeError(f"execute wants a str of Python code, not {type(code).__name__}")
        ar = self._on_each(lambda e: TaskSpec.execute(code, targets=(e,), pinned=True),
                           "execute", targets, method="execute")
        if self.block if block is None else block:
            ar.get()
        return ar

    def run(self, filename: str | Path, targets: Any = None, block: bool | None = None) -> Any:
        """Run a local Python file on the engines (read and compiled here first)."""
        path = Path(filename).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"run: there is no file {str(path)!r}")
        with tokenize.open(path) as f:
            source = f.read()
        compile(source, str(path), "exec", dont_inherit=True)
        return self.execute(source, targets=targets, block=block)

    def push(self, ns: dict, targets: Any = None, block: bool | None = None,
             track: bool | None = None) -> Any:
        """Push the names and values of ``ns`` into the engines' namespaces."""
        if not isinstance(ns, dict):
            raise TypeError(f"push wants a dict of names to values, not {type(ns).__name__}")
        bad = [k for k in ns if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            raise ValueError(f"push: keys must be valid Python names, got {bad!r}")
        ar = self._on_each(
            lambda e: TaskSpec.call(shipped.push, (ns,), targets=(e,), pinned=True), "push",
            targets, method="push")
        return self._result(ar, block)

    def pull(self, names: str | list[str] | tuple[str, ...], targets: Any = None,
             block: bool | None = None) -> Any:
        """The values of ``names`` on each engine (one name: its value; several: a list)."""
        single = isinstance(names, str)
        keys = names if single else list(names)
        if not single and not all(isinstance(k, str) for k in keys):
            raise TypeError(f"pull wants names (str), got {names!r}")
        ar = self._on_each(
            lambda e: TaskSpec.call(shipped.pull, (keys,), targets=(e,), pinned=True), "pull",
            targets, method="pull")
        return self._result(ar, block)

    def scatter(self, key: str, seq: Any, dist: str = "b", flatten: bool = False,
                targets: Any = None, block: bool | None = None, track: bool | None = None
                ) -> Any:
        """Cut ``seq`` into one contiguous part per engine and push it as ``key``."""
        _check_name(key, "scatter")
        check_dist(dist)
        ids, _ = self._engines(targets)
        if not ids:
            raise ValueError("scatter: there are no engines to scatter to")
        parts = partitions(seq, len(ids), flatten=flatten, dist=dist)
        specs = [TaskSpec.call(shipped.push, ({key: part},), targets=(e,), pinned=True)
                 for e, part in zip(ids, parts, strict=True)]
        return self._result(self._submit(specs, "scatter", method="scatter"), block)

    def gather(self, key: str, dist: str = "b", targets: Any = None,
               block: bool | None = None) -> Any:
        """Pull ``key`` from each engine and join the parts (the inverse of scatter)."""
        _check_name(key, "gather")
        check_dist(dist)
        ids, _ = self._engines(targets)
        specs = [TaskSpec.call(shipped.pull, (key,), targets=(e,), pinned=True) for e in ids]
        ar = self._submit(specs, "gather", mapping=True, joiner=join, method="gather")
        return self._result(ar, block)

    def _plan(self, length: int, chunksize: int | None) -> list[tuple[int, int, int | None]]:
        if chunksize is not None:
            raise TypeError("DirectView.map takes no chunksize: each engine gets one part")
        ids, _ = self._engines()
        n = min(len(ids), length)
        return [(*bounds(length, n, index), ids[index]) for index in range(n)]

    def _chunk_spec(self, helper: Callable[..., Any], args: tuple, target: int | None
                    ) -> TaskSpec:
        assert target is not None
        return TaskSpec.call(helper, args, targets=(target,), pinned=True)

    def clear(self, targets: Any = None, block: bool | None = None) -> Any:
        """Empty the engines' namespaces."""
        ar = self._on_each(
            lambda e: TaskSpec.call(shipped.reset, (), targets=(e,), pinned=True), "clear",
            targets, method="clear")
        return self._result(ar, block)

    def update(self, ns: dict) -> Any:
        """``push(ns)``."""
        return self.push(ns)

    def get(self, key_s: str | list[str]) -> Any:
        """``pull(key_s)``, blocking."""
        return self.pull(key_s, block=True)

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str):
            raise TypeError(f"engine variable names are str, not {type(key).__name__}")
        return self.pull(key, block=True)

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"engine variable names are str, not {type(key).__name__}")
        self.push({key: value}, block=True)

    def __len__(self) -> int:
        return len(self._engines()[0])

    @contextlib.contextmanager
    def sync_imports(self, local: bool = True, quiet: bool = False) -> Iterator[None]:
        """``with dview.sync_imports(): import numpy``: the imports of the block run
        on the engines too (and here, unless ``local`` is False)."""
        real_import = builtins.__import__
        view = self
        block_frame = sys._getframe(2)  # the user's frame (past contextmanager's __enter__)

        def importing(name: str, globals: Any = None, locals: Any = None,
                      fromlist: Any = (), level: int = 0) -> Any:
            # only the import statements of the block itself, not the imports
            # they (or plait, sending them) make in turn
            if level == 0 and sys._getframe(1) is block_frame:
                statement = (f"from {name} import {', '.join(fromlist)}" if fromlist
                             else f"import {name}")
                if not quiet:
                    print(f"importing {', '.join(fromlist) + ' from ' if fromlist else ''}"
                          f"{name} on engine(s)")
                view.execute(statement, block=True)
            if local or sys._getframe(1) is not block_frame:
                return real_import(name, globals, locals, fromlist, level)
            return None

        builtins.__import__ = importing
        try:
            yield
        finally:
            builtins.__import__ = real_import

    def activate(self, suffix: str = "") -> None:
        """Make this view the one of the ``%px{suffix}`` magics (and load them)."""
        from plait.parallel import _magics

        _magics.activate(self, suffix)

    def use_cloudpickle(self) -> None:
        """Send this view's calls pickled with cloudpickle (the default)."""
        self._set_pickler("cloudpickle")

    def use_pickle(self) -> None:
        """Send this view's calls with the standard pickle (functions by reference)."""
        self._set_pickler("pickle")

    def use_dill(self) -> None:
        """Send this view's calls pickled with dill (which must be installed here
        and on the engines)."""
        self._set_pickler("dill")

    def _set_pickler(self, name: str) -> None:
        assert name in PICKLERS
        if name == "dill":
            try:
                import dill  # noqa: F401
            except ImportError:
                raise ImportError("use_dill() needs dill: pip install dill") from None
        self._pickler = name


def _check_name(key: Any, method: str) -> None:
    if not isinstance(key, str):
        raise TypeError(f"{method}: a variable name is a str, not a {type(key).__name__}")
    if not key.isidentifier():
        raise ValueError(f"{method}: {key!r} is not a valid Python name")


class LoadBalancedView(View):
    """The controller's scheduler chooses the engine of each call.

    Flags: ``block``, ``targets`` (the engines it may choose among; None:
    all), ``retries``, ``after`` and ``follow`` (graph dependencies:
    msg_ids, AsyncResults or Dependencies), ``timeout`` (seconds a task
    may wait for its dependencies and an engine; DependencyTimeout past it)
    and ``time_limit`` (seconds a task may run on an engine: past them it is
    interrupted and fails with TaskTimeout, and runs again elsewhere if it
    has retries left).
    """

    _flag_names = ("block", "track", "targets", "retries", "after", "follow", "timeout",
                   "time_limit")

    def __init__(self, client: Any, targets: Any = None, block: bool | None = None):
        super().__init__(client, targets, block)
        self._check_targets(targets)
        self.retries = 0
        self.after: Any = None
        self.follow: Any = None
        self.timeout: float | None = None
        self.time_limit: float | None = None

    def _check_targets(self, targets: Any) -> None:
        if targets is not None:
            self.client._engine_ids(targets)

    def _spec(self, kind: Callable[..., TaskSpec], *args: Any) -> TaskSpec:
        targets = None if self.targets is None else tuple(self.client._engine_ids(self.targets))
        return kind(*args, retries=self.retries, timeout=self.timeout, targets=targets,
                    time_limit=self.time_limit,
                    after=graph_dependency(self.client, self.after, "after"),
                    follow=graph_dependency(self.client, self.follow, "follow"))

    def _apply(self, f: Callable[..., Any], args: tuple, kwargs: dict) -> AsyncResult:
        if not callable(f):
            raise TypeError(f"apply needs a callable, not a {type(f).__name__}")
        return self._submit([self._spec(TaskSpec.call, f, args, kwargs)], _name(f), single=True)

    _map_options = "block, chunksize and ordered"

    def _plan(self, length: int, chunksize: int | None) -> list[tuple[int, int, int | None]]:
        engines = 1 if chunksize is not None else max(1, len(self.client.ids))
        plan: list[tuple[int, int, int | None]] = []
        start = 0
        for size in chunk_sizes(length, engines, chunksize):
            plan.append((start, start + size, None))
            start += size
        return plan

    def _chunk_spec(self, helper: Callable[..., Any], args: tuple, target: int | None
                    ) -> TaskSpec:
        return self._spec(TaskSpec.call, helper, args, {})

    def imap(self, f: Callable[..., Any], *sequences: Any, ordered: bool = True,
             max_outstanding: int | str = "auto", chunksize: int | None = None,
             **options: Any) -> Iterator[Any]:
        """``map(f, *sequences)`` lazily, as ipyparallel's: the sequences (any
        iterables, endless ones too) are read as results come back, keeping
        ``max_outstanding`` tasks submitted at most ('auto': twice the engines),
        and the results are yielded in order (or, with ``ordered=False``, as
        they finish).  A task that failed raises its RemoteError when reached.
        With ``chunksize``, the sequences are read at once and cut in chunks
        of that many elements, as ``map_async`` does."""
        if chunksize is not None:
            return iter(self._map(f, sequences, chunksize=chunksize, ordered=ordered,
                                  **options))
        if options:
            raise TypeError(f"LoadBalancedView.imap takes no options {sorted(options)}; it "
                            f"takes ordered and max_outstanding")
        if not callable(f):
            raise TypeError(f"imap needs a callable, not a {type(f).__name__}: {f!r}")
        if not sequences:
            raise TypeError("imap needs at least one sequence")
        if max_outstanding == "auto":
            limit = 2 * max(1, len(self.client.ids))
        elif isinstance(max_outstanding, int) and not isinstance(max_outstanding, bool) \
                and max_outstanding >= 1:
            limit = max_outstanding
        else:
            raise ValueError(f"max_outstanding is 'auto' or an int >= 1, not "
                             f"{max_outstanding!r}")
        return self._lazy_map(f, zip(*sequences, strict=False), ordered, limit)

    def _lazy_map(self, f: Callable[..., Any], items: Iterator[tuple], ordered: bool,
                  limit: int) -> Iterator[Any]:
        outstanding: collections.deque[AsyncResult] = collections.deque()
        exhausted = False
        while True:
            while not exhausted and len(outstanding) < limit:
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                outstanding.append(self._submit([self._spec(TaskSpec.call, f, item, {})],
                                                _name(f), single=True, method="imap"))
            if not outstanding:
                return
            if ordered:
                yield outstanding.popleft().get()
                continue
            done, _ = concurrent.futures.wait(outstanding,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            for ar in [a for a in outstanding if a in done]:
                outstanding.remove(ar)
                yield ar.get()
