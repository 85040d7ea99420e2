"""cloudpickle's output, made faster on the hot path.

:func:`dumps` writes what ``cloudpickle.dumps`` writes, as far as the
receiver can tell, at a fraction of the cost for the common case of a task:
a function called with plain arguments.

* The stream is written by the standard (C) pickler; cloudpickle itself is
  asked only about the objects the standard pickler would handle
  differently.  For every object that is not a plain value (a function, an
  instance of some class), :meth:`_Pickler.reducer_override` decides: an
  instance of a class that cloudpickle pickles by reference (the class can
  be imported on the receiving side) pickles the standard way, which is
  cloudpickle's way for it too; a function goes through the cache below;
  anything else (classes, instances of classes defined in ``__main__``,
  code objects...) makes the whole object go to cloudpickle instead, as does
  anything the standard pickler refuses.
* A function is pickled by cloudpickle once and its bytes are reused while
  nothing they captured can have changed: its code, defaults and closure
  cells hold only immutable atoms, and every global name it uses is unset,
  a module pickled by reference, or an immutable atom, the same ones as
  when it was pickled.  A function that reads a list, a dict or another
  function from its globals is pickled anew each time, as cloudpickle
  always does.  The receiver gets ``pickle.loads(function bytes)``: the
  function cloudpickle would have sent.

:func:`dumps` raises what pickling raises.
"""

from __future__ import annotations

import io
import pickle
import types
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle

try:  # cloudpickle's own judgement of what travels by reference (private API)
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES, _should_pickle_by_reference
except ImportError:  # another cloudpickle: everything goes its way
    _should_pickle_by_reference = None
    _PICKLE_BY_VALUE_MODULES = set()

#: Values a function may capture without being pickled anew (immutable atoms).
_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes})


def _atom(value: Any) -> bool:
    kind = type(value)
    if kind in _ATOMS:
        return True
    if kind is tuple or kind is frozenset:
        return len(value) <= 16 and all(type(v) in _ATOMS for v in value)
    return False


_names_of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Every name ``code`` (and the code nested in it) may look up globally."""
    try:
        return _names_of[code]
    except (KeyError, TypeError):
        pass
    names: set[str] = set()
    stack = [code]
    while stack:
        item = stack.pop()
        names.update(item.co_names)
        stack.extend(c for c in item.co_consts if isinstance(c, types.CodeType))
    found = tuple(sorted(names))
    try:
        _names_of[code] = found
    except TypeError:
        pass
    return found


def _by_reference(obj: Any) -> bool:
    if _should_pickle_by_reference is None:
        return False
    try:
        return bool(_should_pickle_by_reference(obj))
    except Exception:
        return False


def _fingerprint(f: types.FunctionType) -> tuple | None:
    """What the pickle of ``f`` depends on; None when that may be mutable state."""
    if f.__dict__:
        return None
    key: list[Any] = [f.__code__, f.__module__, f.__qualname__, len(_PICKLE_BY_VALUE_MODULES)]
    defaults, kwdefaults, closure = f.__defaults__, f.__kwdefaults__, f.__closure__
    if defaults:
        for value in defaults:
            if not _atom(value):
                return None
            key.append((type(value), value))
    if kwdefaults:
        for name, value in sorted(kwdefaults.items()):
            if not _atom(value):
                return None
            key.append((name, type(value), value))
    if closure:
        for cell in closure:
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                return None
            if not _atom(value):
                return None
            key.append((type(value), value))
    namespace = f.__globals__
    for name in _global_names(f.__code__):
        if name not in namespace:
            continue
        value = namespace[name]
        if _atom(value):
            key.append((name, type(value), value))
        elif isinstance(value, types.ModuleType) and _by_reference(value):
            key.append((name, id(value)))
        else:
            return None
    return tuple(key)


_functions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def function_bytes(f: types.FunctionType) -> bytes:
    """``cloudpickle.dumps(f)``, from the cache when it cannot have changed."""
    fingerprint = _fingerprint(f)
    if fingerprint is not None:
        cached = _functions.get(f)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
    data = cloudpickle.dumps(f, protocol=5)
    if fingerprint is not None:
        _functions[f] = (fingerprint, data)
    return data


_standard: dict[type, bool] = {}
_standard_for = [0]  # the size of cloudpickle's by-value registry _standard was made with


def _remember(kind: type, standard: bool) -> bool:
    if len(_standard) < 4096:
        _standard[kind] = standard
    return standard


_SPECIAL = (type, types.CodeType, types.ModuleType, types.CellType, types.MethodType,
            property, classmethod, staticmethod)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is types.FunctionType:
            cached = _functions.get(obj)
            if cached is not None and cached[0] == _fingerprint(obj):
                return pickle.loads, (cached[1],)  # by value, unchanged
            if _by_reference(obj):
                return NotImplemented  # by its name, as cloudpickle does
            return pickle.loads, (function_bytes(obj),)
        if kind is types.BuiltinFunctionType:
            return NotImplemented  # by reference, as cloudpickle does
        if _standard_for[0] != len(_PICKLE_BY_VALUE_MODULES):
            _standard.clear()
            _standard_for[0] = len(_PICKLE_BY_VALUE_MODULES)
        if isinstance(obj, type):  # a class: by reference, or cloudpickle's way
            standard = _standard.get(obj)  # (classes and instances' types share the table)
            if standard is None:
                standard = _remember(obj, _by_reference(obj))
        else:
            standard = _standard.get(kind)
            if standard is None:
                standard = _remember(kind, kind not in _SPECIAL and _by_reference(kind))
        if standard:
            return NotImplemented
        raise pickle.PicklingError("cloudpickle's own way is needed")  # see dumps


def dumps(obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None
          ) -> bytes:
    """What ``cloudpickle.dumps(obj, protocol=5, buffer_callback=...)`` would
    write, faster (see the module documentation)."""
    out = io.BytesIO()
    kept: list[pickle.PickleBuffer] = []
    try:
        _Pickler(out, protocol=5,
                 buffer_callback=None if buffer_callback is None else kept.append).dump(obj)
    except Exception:  # what only cloudpickle knows how to pickle
        return cloudpickle.dumps(obj, protocol=5, buffer_callback=buffer_callback)
    if buffer_callback is not None:
        for buffer in kept:
            buffer_callback(buffer)
    return out.getvalue()
