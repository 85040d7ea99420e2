"""One mapper and one parallel function, for both clients.

``client.mapper(**options)`` returns a :class:`Mapper`: ``map(func,
*sequences)`` with those options fixed (they read and write as attributes
too: ``mapper.targets``).  ``client.parallel(**options)`` returns a
decorator making a :class:`ParallelFunction`, a function of one element
that maps itself over whole sequences.  How the map runs is the client's
business (its ``_map_with``): the MultiEngine client gives every engine one
block of the sequences, the TaskClient cuts them into load-balanced tasks.
Either way each engine maps the function over its chunk with
:func:`plait.kernel.engine.shipped.map_chunk`.

:class:`TaskMapper` and :class:`TaskParallelFunction` are the Task
client's old classes, kept with their old signatures (deprecated).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from plait.kernel.client._taskmap import check_map_options


class Mapper:
    """``map(func, *sequences)`` on ``client``, with ``options`` fixed.

    In a blocking client ``map`` returns the list of results (or what the
    options ask for: a PendingResult with ``block=False``); in an
    asynchronous one, a Deferred of it.  Each option is also an attribute.
    """

    client: Any
    options: dict[str, Any]

    def __init__(self, client: Any, **options: Any):
        object.__setattr__(self, "client", client)
        object.__setattr__(self, "options", dict(options))

    def map(self, func: Callable[..., Any], *sequences: Any) -> Any:
        """``map(func, *sequences)`` in parallel, with this mapper's options."""
        return self.client._map_with(func, sequences, self.options)

    def __getattr__(self, name: str) -> Any:  # only for names that are not attributes
        options = self.__dict__.get("options", {})
        if name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__.get("options", {}):
            self.options[name] = value
        else:
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        options = " ".join(f"{name}={value!r}" for name, value in self.options.items())
        return f"<Mapper {options}>" if options else "<Mapper>"


class ParallelFunction:
    """A function of one element (of each sequence) applied to whole sequences.

    ``pf(xs, ys)`` and ``pf.map(xs, ys)`` are ``mapper.map(func, xs, ys)``;
    except on the views of :mod:`plait.parallel` (whose ``_call_with`` says
    what a call does), where, as in ipyparallel, ``pf(xs)`` calls ``func`` on
    each chunk of ``xs`` and joins the results.
    """

    def __init__(self, func: Callable[..., Any], mapper: Mapper):
        if not callable(func):
            raise TypeError(f"parallel() decorates a function, not a {type(func).__name__}")
        self.func = func
        self.mapper = mapper
        functools.update_wrapper(self, func)

    def __call__(self, *sequences: Any) -> Any:
        call = getattr(self.mapper.client, "_call_with", None)
        if call is not None:
            return call(self.func, sequences, self.mapper.options)
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


# -- the Task client's old names (deprecated) --------------------------------------------
class TaskMapper(Mapper):
    """Deprecated: ``TaskMapper(client, chunksize=None, **options)`` is
    ``client.mapper(chunksize, **options)``."""

    def __init__(self, client: Any, chunksize: int | None = None, **options: Any):
        check_map_options(chunksize, options)
        super().__init__(client, chunksize=chunksize, **options)


class TaskParallelFunction(ParallelFunction):
    """Deprecated: ``TaskParallelFunction(mapper, function)`` is
    ``ParallelFunction(function, mapper)``."""

    def __init__(self, mapper: Mapper, function: Callable[..., Any]):
        super().__init__(function, mapper)

    @property
    def function(self) -> Callable[..., Any]:
        return self.func
