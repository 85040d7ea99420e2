"""The functions clients ship to engines by reference, and the only ones.

A client sends these through ``apply`` (MultiEngine) or inside a task
(Task interface) as references: the pickle names
``plait.kernel.engine.shipped.<function>``, and the engine imports this
module to run them.  Those names are a wire contract: keep them, and keep
their signatures.  This module imports nothing of the client, so an engine
running a map loads engine code only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plait.wire.errors import SerializationError
from plait.wire.serialize import serialize


def map_chunk(function: Callable[..., Any], *parts: Any) -> list[Any]:
    """``list(map(function, *parts))``: one chunk of a parallel map.

    Both interfaces cut the sequences of a map into chunks and send each
    chunk's slices of the sequences (``parts``) with the function.
    """
    return list(map(function, *parts))


def serialized_values(names: list[str]) -> list[bytes]:
    """The serialized values of ``names`` in the engine namespace.

    NameError for a name that is not defined; SerializationError, naming the
    variable, for a value that cannot be pickled.
    """
    from plait.kernel.engine.interpreter import get_interpreter

    values = get_interpreter().pull(list(names))
    out = []
    for name, value in zip(names, values, strict=True):
        try:
            out.append(serialize(value))
        except SerializationError as exc:
            raise SerializationError(f"the value of {name!r} cannot be sent: {exc}") from None
    return out


def forget(names: list[str]) -> None:
    """Remove ``names`` from the engine namespace, where they are."""
    from plait.kernel.engine.interpreter import get_interpreter

    namespace = get_interpreter().namespace
    for name in names:
        namespace.pop(name, None)
