"""What clients ship to engines by reference, and the only such things.

A client sends these through ``apply`` (MultiEngine) or inside a task
(Task interface, and the views of the later generation) as references: the
pickle names ``plait.kernel.engine.shipped.<name>``, and the engine imports
this module to run them.  Those names are a wire contract: keep them, and
keep their signatures.  This module imports nothing of the client, so an
engine running a map loads engine code only.

The helper functions (``map_chunk``, ``serialized_values``, ``forget``) are
plait's own; :class:`Reference`, :func:`interactive`, :class:`dependent`,
:func:`depend` and :func:`require` are what users of the later generation
put in their calls (``plait.parallel`` exports them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plait.kernel.engine.current import get_interpreter
from plait.wire.errors import SerializationError, UnmetDependency
from plait.wire.serialize import serialize


def map_chunk(function: Callable[..., Any], *parts: Any) -> list[Any]:
    """``list(map(function, *parts))``: one chunk of a parallel map.

    Both interfaces cut the sequences of a map into chunks and send each
    chunk's slices of the sequences (``parts``) with the function.
    """
    return list(map(function, *parts))


def call_chunk(function: Callable[..., Any], *parts: Any) -> Any:
    """``function(*parts)``: one chunk of a call of a later-generation parallel
    function (which, unlike its ``map``, gets whole chunks)."""
    return function(*parts)


def serialized_values(names: list[str]) -> list[bytes]:
    """The serialized values of ``names`` in the engine namespace.

    NameError for a name that is not defined; SerializationError, naming the
    variable, for a value that cannot be pickled.
    """
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
    namespace = get_interpreter().namespace
    for name in names:
        namespace.pop(name, None)


def push(namespace: dict) -> None:
    """Put the names and values of ``namespace`` in the engine namespace (as
    ``Interpreter.push``: interactively defined functions are re-bound there)."""
    get_interpreter().push(namespace)


def pull(names: str | list[str]) -> Any:
    """The value of a name, or the list of values of a list of names (NameError
    for one that is not defined)."""
    return get_interpreter().pull(names)


def reset() -> None:
    """Empty the engine namespace."""
    get_interpreter().reset()


# -- what travels with a call of the later generation ---------------------------------
class Reference:
    """An argument that stands for a name in the engine's namespace.

    ``view.apply(f, Reference('a'))`` calls ``f`` with the value of ``a`` on
    each engine (NameError there if it is not defined).  Resolved when
    passed directly as an argument or a keyword argument.
    """

    __slots__ = ("name",)

    def __init__(self, name: str):
        if not isinstance(name, str) or not name.isidentifier():
            raise TypeError(f"a Reference names an engine variable, not {name!r}")
        self.name = name

    def __reduce__(self) -> tuple:
        return Reference, (self.name,)

    def __repr__(self) -> str:
        return f"Reference({self.name!r})"


def interactive(function: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``function`` in the engine's namespace, as if typed at the prompt.

    A function defined in a module normally sees that module's globals; so
    decorated, it travels by value and looks its names up in the engine
    namespace (what was pushed, scattered or imported there).
    """
    function.__module__ = "__main__"
    return function


class dependent:  # (the reference's name)
    """``function`` guarded by a functional dependency: ``depends(*args, **kwargs)``.

    Called on an engine, it first calls ``depends``: if that returns False,
    the dependency is unmet there, :class:`~plait.wire.errors.UnmetDependency`
    is raised and the scheduler sends the task to another engine (anything
    but False lets ``function`` run).
    """

    def __init__(self, function: Callable[..., Any], depends: Callable[..., Any],
                 *args: Any, **kwargs: Any):
        if not callable(function) or not callable(depends):
            raise TypeError("dependent(f, df, *args, **kwargs) needs two callables")
        self.function = function
        self.depends = depends
        self.args = args
        self.kwargs = kwargs
        self.__name__ = getattr(function, "__name__", "dependent")
        self.__doc__ = getattr(function, "__doc__", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.depends(*self.args, **self.kwargs) is False:
            raise UnmetDependency(f"the dependency {self._describe()} is not met here")
        return self.function(*args, **kwargs)

    def _describe(self) -> str:
        name = getattr(self.depends, "__name__", repr(self.depends))
        return f"{name}(*{self.args!r}, **{self.kwargs!r})"

    def __repr__(self) -> str:
        return f"<dependent {self.__name__} on {self._describe()}>"


def depend(depends: Callable[..., Any], *args: Any, **kwargs: Any
           ) -> Callable[[Callable[..., Any]], dependent]:
    """``@depend(df, *args, **kwargs)``: the decorated function runs only on
    engines where ``df(*args, **kwargs)`` does not return False."""
    if not callable(depends):
        raise TypeError(f"depend() needs a callable, not {depends!r}")

    def decorate(function: Callable[..., Any]) -> dependent:
        return dependent(function, depends, *args, **kwargs)

    return decorate


def _importable(names: tuple[str, ...], functions: tuple[Callable[..., Any], ...]) -> bool:
    """(On an engine) import ``names`` into the namespace and put ``functions``
    there; False when a module cannot be imported."""
    import importlib

    namespace = get_interpreter().namespace
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            return False
        top = name.partition(".")[0]
        namespace[top] = module if top == name else importlib.import_module(top)
    for function in functions:
        namespace[function.__name__] = get_interpreter().adopt(function)
    return True


def require(*objects: Any) -> Callable[[Callable[..., Any]], dependent]:
    """``@require('numpy', othermodule, helper)``: the decorated function runs
    only on engines where the modules (by name, or module objects) import;
    they are imported into the engine namespace first, and the functions
    given are put there."""
    import types

    names, functions = [], []
    for obj in objects:
        if isinstance(obj, str):
            names.append(obj)
        elif isinstance(obj, types.ModuleType):
            names.append(obj.__name__)
        elif callable(obj):
            functions.append(obj)
        else:
            raise TypeError(f"require() takes module names, modules and functions, not {obj!r}")
    return depend(_importable, tuple(names), tuple(functions))
