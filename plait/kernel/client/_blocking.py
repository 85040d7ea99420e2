"""Derive a blocking client from an asynchronous one, generically.

Every method of the asynchronous class marked with
:func:`plait.kernel.client._base.asynchronous` becomes a method of the same
name and signature that runs it in the reactor thread and returns (or
raises) its result; one marked :func:`plait.kernel.client._base.counted`
takes ``progress=`` where the asynchronous method takes ``tally=``, and can
show a progress bar as it waits (:mod:`plait.kernel.client._progress`).
Plain attributes (``targets``, ``block``) are shared with the asynchronous
instance; helpers written only in terms of the public methods (mixins) are
inherited as they are, so they block in the blocking client and return
Deferreds in the asynchronous one.

:func:`blocking_twin` turns an asynchronous client that already exists into
its blocking twin (the magics use it on an asynchronous client activated
from Twisted code).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from plait.kernel.client import _progress, _reactor


class BlockingClientBase:
    """Base of derived blocking clients: owns the asynchronous twin."""

    _async_class: type[Any]
    _shared_attributes: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any):
        object.__setattr__(self, "_async", _reactor.call(self._async_class.connect, *args, **kwargs))

    @classmethod
    def wrapping(cls, async_client: Any) -> Any:
        """A blocking client over ``async_client`` (already connected)."""
        client = cls.__new__(cls)
        object.__setattr__(client, "_async", async_client)
        return client

    def __getattr__(self, name: str) -> Any:
        if name in type(self)._shared_attributes:
            return getattr(self._async, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self)._shared_attributes:
            setattr(self._async, name, value)
        else:
            object.__setattr__(self, name, value)

    @property
    def asynchronous(self) -> Any:
        """The asynchronous client behind this one (for use in Twisted code)."""
        return self._async


def _blocking_method(name: str, fn: Any) -> Any:
    desc = getattr(fn, "_plait_counted", None)
    if desc is None:
        @functools.wraps(fn)
        def method(self: BlockingClientBase, *args: Any, **kwargs: Any) -> Any:
            # (not _reactor.call: its timeout= would take a method's own, a task option)
            pending = _reactor.start(getattr(self._async, name), *args, **kwargs)
            pending.wait()
            return pending.result()

        return method

    @functools.wraps(fn)
    def counting(self: BlockingClientBase, *args: Any, progress: bool | None = None,
                 **kwargs: Any) -> Any:
        call = getattr(self._async, name)
        if not _progress.shows(progress):
            pending = _reactor.start(call, *args, **kwargs)
            pending.wait()
            return pending.result()
        tally = _progress.Tally(asked=progress is True)
        pending = _reactor.start(call, *args, tally=tally, **kwargs)
        _progress.wait(lambda: tally.done, lambda: tally.total, pending.wait, None, progress,
                       desc)
        return pending.result()

    signature = inspect.signature(fn)  # (the blocking face: progress, not tally)
    counting.__signature__ = signature.replace(parameters=[  # type: ignore[attr-defined]
        p.replace(name="progress", annotation="bool | None") if p.name == "tally" else p
        for p in signature.parameters.values()])
    return counting


#: Each asynchronous client class derived from, and its blocking class.
_twins: dict[type, type[Any]] = {}


def derive_blocking(async_class: type, name: str, mixins: tuple[type, ...] = (),
                    shared: tuple[str, ...] = (), doc: str | None = None) -> type[Any]:
    """A blocking client class whose methods wait for ``async_class``'s Deferreds.

    The class is named ``name`` and belongs to the module of
    ``async_class`` until the public face that exports it says otherwise.
    """
    namespace: dict[str, Any] = {
        "_async_class": async_class,
        "_shared_attributes": shared,
        "__doc__": doc or async_class.__doc__,
        "__module__": async_class.__module__,
        "__qualname__": name,
    }
    for attr, fn in inspect.getmembers(async_class, callable):
        if getattr(fn, "_plait_asynchronous", False):
            namespace[attr] = _blocking_method(attr, fn)
    blocking = type(name, (*mixins, BlockingClientBase), namespace)
    _twins[async_class] = blocking
    return blocking


def blocking_twin(client: Any) -> Any:
    """``client`` if it blocks; the blocking client over it if it is asynchronous.

    TypeError for an object of a class no blocking client was derived from.
    """
    if isinstance(client, BlockingClientBase):
        return client
    for cls in type(client).__mro__:
        if cls in _twins:
            return _twins[cls].wrapping(client)
    raise TypeError(f"{type(client).__name__} is not a plait client")
