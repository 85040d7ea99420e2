"""The engine's executor of user code.

An :class:`Interpreter` owns one engine's persistent namespace and runs the
engine commands on it, in the thread that is to run user code (normally the
main thread).  :meth:`Interpreter.handle` is the one-call entry point: it
never raises and answers with a reply ``(ok, payload)`` as described in
:mod:`plait.interfaces.engine`.  Networking that encodes values itself (for
the bulk channel) calls the command methods directly and reports their
exceptions with :meth:`Interpreter.failure_payload`.

Commands
--------
``execute(lines)``
    Runs Python source.  Commands are numbered from 1 on each engine, failed
    ones included, and every result dict is kept for :meth:`~Interpreter.get_result`.
    The result dict is ``{'id', 'number', 'input': {'raw', 'translated'},
    'stdout', 'stderr'}``.  ``translated`` is the source that ran: the same as
    ``raw`` except that source whose first line is indented is dedented.  When
    the last statement is an expression whose value is not None, its ``repr``
    is printed, as at the interactive prompt (so ``execute('a')`` shows ``a``).
    The source is compiled under the file name ``<In [n]>`` and registered in
    :mod:`linecache` (until its result leaves the history), so that
    tracebacks show the lines of user code.
``push(namespace)``, ``pull(keys)``, ``keys()``, ``reset()``, ``get_result(i)``
    Namespace access; see each method.
``apply(function, args, kwargs)``, ``apply_call((function, args, kwargs))``
    Calls a function on the engine.
``run_task(task)``
    Delegated to :func:`plait.kernel.engine.taskrun.run_on_engine`.

Output
------
While a command runs, ``sys.stdout`` and ``sys.stderr`` are replaced by
capturing streams: everything written to them, by any thread, becomes that
command's ``stdout``/``stderr`` (output written directly to file descriptors 1
and 2, by C code or subprocesses, is not captured).  Each stream keeps at most
``output_limit`` characters.  Output of ``apply`` and ``push``/``pull`` is not
captured: it goes to the engine process's own streams.

Failures
--------
A failing command raises the user's exception, its traceback cut to start at
the first user frame.  For ``execute``, the result dict of the failed command
(with its output so far) is attached to the exception as ``plait_result``;
:meth:`~Interpreter.failure_payload` (used by :meth:`~Interpreter.handle`)
moves it into the failure's ``extra['result']`` and leaves plait's own frames
out of the traceback text.

Interactively defined functions
-------------------------------
Functions written in the client's ``__main__`` (at the IPython prompt, in a
notebook or a script) arrive pickled by value by cloudpickle, with a private
copy of the globals they use.  Such a function, when pushed or when passed to
``apply`` (as the function, or directly as one of its arguments), is re-bound
to the engine namespace, as engine code defined with ``execute`` would be:

* the names it uses are looked up in the engine namespace first, so that it
  sees what was pushed, scattered or imported on the engine;
* a name it uses that the engine namespace lacks is taken from the copy it
  carried (a helper function, a module imported on the client...): for
  ``push`` it is added to the namespace for good (the function lives there
  now), for ``apply`` only for the duration of the call; a helper function
  so added is re-bound in turn;
* ``global`` assignments in it change the engine namespace.

Bound methods, ``functools.partial`` objects, functions inside containers and
functions defined in importable modules are left as they are.

While user code runs, the namespace's module is ``sys.modules['__main__']``,
so that the standard pickle (as used by ``multiprocessing``) finds classes and
functions defined on the engine; :func:`get_interpreter` returns the running
interpreter, through which user code reaches the engine ``properties``.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import dis
import functools
import io
import linecache
import os
import sys
import textwrap
import threading
import types
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, cast

from plait.kernel.engine import current
from plait.kernel.engine.current import get_interpreter as get_interpreter
from plait.kernel.engine.interrupts import interrupts
from plait.kernel.engine.shipped import Reference, dependent
from plait.kernel.engine.taskrun import run_on_engine
from plait.wire.errors import RemoteFailure, SerializationError
from plait.wire.serialize import dumps_plain, serialize

#: Frames of files under this folder are plait's own (left out of user tracebacks).
_PLAIT_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")) + os.sep
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME"})
_MISSING = object()

#: Engine commands that :meth:`Interpreter.handle` accepts.
METHODS = (
    "execute", "push", "pull", "apply", "apply_call", "get_result", "keys", "reset", "run_task",
)



class _Capture(io.TextIOBase):
    """A thread-safe text stream keeping at most ``limit`` characters."""

    def __init__(self, limit: int | None, tee: Callable[[str], None] | None = None):
        super().__init__()
        self._limit = limit
        self._tee = tee  # also called with every text written (output streaming)
        self._parts: list[str] = []
        self._size = 0
        self._dropped = 0
        self._lock = threading.Lock()

    # (io.TextIOBase's encoding and errors are read-only too; typeshed declares them
    # as writable attributes)
    @property
    def encoding(self) -> str:  # type: ignore[override]  # some libraries look before they write
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            kept = text if self._limit is None else text[: max(self._limit - self._size, 0)]
            if kept:  # past the cut, output costs a count, not memory
                self._parts.append(kept)
                self._size += len(kept)
            self._dropped += len(text) - len(kept)
        if self._tee is not None and kept:
            try:
                self._tee(kept)
            except Exception:  # streaming is a preview: it must not break user code
                self._tee = None
        return len(text)

    def getvalue(self) -> str:
        with self._lock:
            text = "".join(self._parts)
            if self._dropped:
                text += f"\n[plait: output cut, {self._dropped} more characters were dropped]\n"
            return text


@contextlib.contextmanager
def _captured(limit: int | None, tee: Callable[[str, str], None] | None = None
              ) -> Iterator[tuple[_Capture, _Capture]]:
    """stdout and stderr captured (at most ``limit`` characters each); with
    ``tee``, ``tee('stdout' or 'stderr', text)`` is called as text is written."""
    if tee is None:
        out, err = _Capture(limit), _Capture(limit)
    else:
        out = _Capture(limit, lambda text: tee("stdout", text))
        err = _Capture(limit, lambda text: tee("stderr", text))
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        yield out, err
    finally:
        sys.stdout, sys.stderr = saved


def _user_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without its leading frames in plait's own code."""
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PLAIT_ROOT):
        tb = tb.tb_next
    return tb


@functools.lru_cache(maxsize=1024)
def _global_names(code: types.CodeType) -> frozenset[str]:
    """The global names used by ``code`` and the code nested in it."""
    names = {ins.argval for ins in dis.get_instructions(code) if ins.opname in _GLOBAL_OPS}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return frozenset(names)


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _copy_result(result: dict) -> dict:
    return {**result, "input": dict(result["input"])}


class Interpreter:
    """One engine's namespace and the commands that act on it.

    ``engine_id`` (settable later, once the controller assigned it) labels the
    results and errors.  ``properties`` is the engine's properties dict, which
    user code may change (see :meth:`take_changed_properties`).
    ``history_limit`` bounds how many result dicts are kept (None: all);
    ``output_limit`` bounds the characters kept per stream and command.

    A lock makes commands run one at a time.  Two interpreters must not run
    code at the same time in one process: output capture swaps the process's
    ``sys.stdout``/``sys.stderr``, and ``sys.modules['__main__']``.
    """

    def __init__(
        self,
        engine_id: int | None = None,
        properties: dict | None = None,
        *,
        history_limit: int | None = 10_000,
        output_limit: int | None = 8 << 20,
    ):
        self.engine_id = engine_id
        self.properties: dict = dict(properties or {})
        self.output_limit = output_limit
        self._history: deque[dict] = deque(maxlen=history_limit)
        self._count = 0
        self._sent_properties = self._snapshot()  # the engine registers with these
        self.properties_error: str | None = None
        #: The repr of the value of the last executed source's final expression
        #: (None when it had none, or it was None).
        self.last_pyout: str | None = None
        #: Called with ``(stream name, text)`` as captured output is written, while
        #: set (the engine streams a later-generation task's output with it).
        self.output_tee: Callable[[str, str], None] | None = None
        self._lock = threading.RLock()
        self.module = self._new_module()

    # -- the namespace -------------------------------------------------

    @staticmethod
    def _new_module() -> types.ModuleType:
        module = types.ModuleType("__main__")
        module.__dict__["__builtins__"] = builtins
        return module

    @property
    def namespace(self) -> dict:
        """The user namespace (the ``__dict__`` of the engine's ``__main__``)."""
        return self.module.__dict__

    def _where(self) -> str:
        return "the engine" if self.engine_id is None else f"engine {self.engine_id}"

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """Run user code: one at a time, as ``__main__``, visible to get_interpreter."""
        with self._lock:
            saved_main = sys.modules.get("__main__")
            current.enter(self)
            sys.modules["__main__"] = self.module
            try:
                yield
            finally:
                if saved_main is None:
                    sys.modules.pop("__main__", None)
                else:
                    sys.modules["__main__"] = saved_main
                current.leave()

    def push(self, namespace: dict) -> None:
        """Merge ``namespace`` (names to values) into the engine namespace.

        Names must be identifiers; interactively defined functions are re-bound
        to the engine namespace (see the module documentation).
        """
        if not isinstance(namespace, dict):
            raise TypeError(f"push needs a dict of names to values, not a {type(namespace).__name__}")
        for key in namespace:
            if not isinstance(key, str) or not key.isidentifier():
                raise ValueError(f"cannot push {key!r}: names must be Python identifiers")
            if key == "__builtins__":
                raise ValueError("cannot push '__builtins__': the engine needs its own")
        with self._running():
            self.namespace.update(namespace)
            memo: dict[int, Any] = {}
            for key, value in namespace.items():
                if self._is_foreign(value):
                    self.namespace[key] = self._adopt(value, memo, {})

    def pull(self, keys: str | list[str]) -> Any:
        """The values of the names ``keys``, as a list (a str: that one value).

        NameError naming the missing name and the engine when one is not defined.
        """
        if isinstance(keys, str):
            return self._lookup(keys)
        return [self._lookup(key) for key in keys]

    def _lookup(self, key: str) -> Any:
        value = self.namespace.get(key, _MISSING) if isinstance(key, str) else _MISSING
        if value is _MISSING:
            raise NameError(f"name {key!r} is not defined on {self._where()}", name=key)
        return value

    def keys(self) -> list[str]:
        """The sorted user names of the namespace (``__dunder__`` names left out)."""
        return sorted(k for k in self.namespace if isinstance(k, str) and not _is_dunder(k))

    def reset(self) -> None:
        """Start over with an empty namespace (command numbers go on)."""
        with self._lock:
            self.module = self._new_module()

    # -- execute -------------------------------------------------------

    def execute(self, lines: str, filename: str | None = None, echo: bool = True) -> dict:
        """Run the Python source ``lines``; return the command's result dict.

        ``filename`` names the source in tracebacks (as ``run`` does with the
        name of the file it sends); default ``<In [n]>``.  The repr of the
        value of a final expression is :attr:`last_pyout` and, with ``echo``
        (the kernel generation's way), written to stdout too.  A failing command
        raises the exception of user code (SyntaxError for bad source) with the
        result dict attached as ``plait_result``.
        """
        if not isinstance(lines, str):
            raise TypeError(f"execute needs Python source as a str, not a {type(lines).__name__}")
        first = next((line for line in lines.splitlines() if line.strip()), "")
        source = textwrap.dedent(lines) if first[:1].isspace() else lines
        with self._running():
            self._count += 1
            number = self._count
            self.last_pyout = None
            result = {
                "id": self.engine_id,
                "number": number,
                "input": {"raw": lines, "translated": source},
                "stdout": "",
                "stderr": "",
            }
            if len(self._history) == self._history.maxlen:  # its source goes too
                linecache.cache.pop(f"<In [{self._history[0]['number']}]>", None)
            self._history.append(result)
            name = filename or f"<In [{number}]>"
            linecache.cache[name] = (len(source), None, source.splitlines(True), name)
            failure: BaseException | None = None
            with _captured(self.output_limit, self.output_tee) as (out, err):
                try:
                    with interrupts.user_code():
                        self._run_source(source, name, out if echo else None)
                except BaseException as exc:
                    failure = exc
            result["stdout"], result["stderr"] = out.getvalue(), err.getvalue()
            if failure is not None:
                try:
                    failure.plait_result = _copy_result(result)  # type: ignore[attr-defined]
                except Exception:  # an exception type that refuses attributes
                    pass
                raise failure.with_traceback(_user_traceback(failure.__traceback__))
            return _copy_result(result)

    def _run_source(self, source: str, name: str, out: _Capture | None) -> None:
        # (typeshed types compile(..., PyCF_ONLY_AST) as AST; in "exec" mode it is a Module)
        tree = cast(
            ast.Module, compile(source, name, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
        )
        last = None
        final = tree.body[-1] if tree.body else None
        if isinstance(final, ast.Expr):
            tree.body.pop()
            last = compile(ast.Expression(final.value), name, "eval", dont_inherit=True)
        exec(compile(tree, name, "exec", dont_inherit=True), self.namespace)
        if last is not None:
            value = eval(last, self.namespace)
            if value is not None:
                self.last_pyout = repr(value)
                if out is not None:
                    out.write(self.last_pyout + "\n")

    def get_result(self, i: int | None = None) -> dict:
        """The result dict of command number ``i`` (None: the last command).

        IndexError when there is no such command, or it is no longer kept.
        """
        if not self._history:
            raise IndexError(f"{self._where()} has not executed any command yet")
        if i is None:
            return _copy_result(self._history[-1])
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"a command number must be an int, not {type(i).__name__}")
        first, last = self._history[0]["number"], self._history[-1]["number"]
        if not 1 <= i <= last:
            raise IndexError(
                f"{self._where()} has no command number {i}: its commands are numbered 1 to {last}"
            )
        if i < first:
            raise IndexError(
                f"the result of command {i} is no longer kept on {self._where()}: "
                f"only the last {len(self._history)} are (commands {first} to {last})"
            )
        return _copy_result(self._history[i - first])

    # -- apply ---------------------------------------------------------

    def apply(self, function: Any, args: Any = (), kwargs: dict | None = None) -> Any:
        """Call ``function(*args, **kwargs)`` on the engine; return its value.

        Interactively defined functions (the function, or one passed directly
        as an argument) run in the engine namespace; see the module docs.
        """
        if not callable(function):
            raise TypeError(f"apply needs a callable, not a {type(function).__name__}")
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        with self._running():
            memo: dict[int, Any] = {}
            added: dict[str, Any] = {}
            try:
                function = self._adopt(function, memo, added)
                args = tuple(self._adopt(a, memo, added) for a in args)
                kwargs = {k: self._adopt(v, memo, added) for k, v in kwargs.items()}
                with interrupts.user_code():
                    return function(*args, **kwargs)
            finally:
                for name, value in added.items():  # take back what the call borrowed
                    if self.namespace.get(name, _MISSING) is value:
                        del self.namespace[name]

    def call(self, function: Any, args: Any = (), kwargs: dict | None = None
             ) -> tuple[Any, str, str]:
        """A call of the later generation: ``(value, stdout, stderr)``.

        As :meth:`apply`, with the output captured (as :meth:`execute` does),
        :class:`~plait.kernel.engine.shipped.Reference` arguments replaced by
        the values they name, and the parts of a
        :class:`~plait.kernel.engine.shipped.dependent` re-bound to the
        namespace too.  An exception of user code propagates with
        ``plait_output``, the ``(stdout, stderr)`` so far, attached.
        """
        if not callable(function):
            raise TypeError(f"apply needs a callable, not a {type(function).__name__}")
        args = tuple(self._resolve(a) for a in args or ())
        kwargs = {k: self._resolve(v) for k, v in (kwargs or {}).items()}
        with self._running(), _captured(self.output_limit, self.output_tee) as (out, err):
            memo: dict[int, Any] = {}
            added: dict[str, Any] = {}
            try:
                function = self._adopt_callable(function, memo, added)
                args = tuple(self._adopt(a, memo, added) for a in args)
                kwargs = {k: self._adopt(v, memo, added) for k, v in kwargs.items()}
                with interrupts.user_code():
                    value = function(*args, **kwargs)
            except BaseException as exc:
                try:
                    exc.plait_output = (out.getvalue(), err.getvalue())  # type: ignore[attr-defined]
                except Exception:
                    pass
                raise exc.with_traceback(_user_traceback(exc.__traceback__)) from None
            finally:
                for name, item in added.items():
                    if self.namespace.get(name, _MISSING) is item:
                        del self.namespace[name]
        return value, out.getvalue(), err.getvalue()

    def _resolve(self, value: Any) -> Any:
        return self._lookup(value.name) if isinstance(value, Reference) else value

    def _adopt_callable(self, function: Any, memo: dict[int, Any], added: dict[str, Any]
                        ) -> Any:
        """``function`` re-bound as :meth:`_adopt` does, looking inside dependents."""
        if isinstance(function, dependent):
            return dependent(self._adopt_callable(function.function, memo, added),
                             self._adopt_callable(function.depends, memo, added),
                             *function.args, **function.kwargs)
        return self._adopt(function, memo, added)

    def adopt(self, function: Any) -> Any:
        """``function`` re-bound to the namespace for good (as :meth:`push` does)."""
        with self._running():
            return self._adopt(function, {}, {})

    def apply_call(self, call: tuple) -> Any:
        """:meth:`apply` taking one ``(function, args, kwargs)`` tuple, as sent."""
        if not isinstance(call, (tuple, list)) or not 1 <= len(call) <= 3:
            raise TypeError("apply needs a (function, args, kwargs) tuple")
        return self.apply(*call)

    def run_task(self, task: Any) -> Any:
        """Run what ``run_task`` brought (see :func:`plait.kernel.engine.taskrun.run_on_engine`)."""
        return run_on_engine(self, task)

    def _is_foreign(self, obj: Any) -> bool:
        """True for a function defined interactively, outside this namespace."""
        return (
            isinstance(obj, types.FunctionType)
            and obj.__module__ == "__main__"
            and obj.__globals__ is not self.namespace
        )

    def _adopt(self, obj: Any, memo: dict[int, Any], added: dict[str, Any]) -> Any:
        """``obj`` re-bound to the namespace if foreign; names it lacks are added.

        ``memo`` maps ids of functions already re-bound to their copies;
        ``added`` receives the names added to the namespace.
        """
        if not self._is_foreign(obj):
            return obj
        if id(obj) in memo:
            return memo[id(obj)]
        namespace = self.namespace
        new = types.FunctionType(
            obj.__code__, namespace, obj.__name__, obj.__defaults__, obj.__closure__
        )
        new.__kwdefaults__ = obj.__kwdefaults__
        new.__qualname__ = obj.__qualname__
        new.__doc__ = obj.__doc__
        new.__annotations__ = obj.__annotations__
        new.__dict__.update(obj.__dict__)
        memo[id(obj)] = new
        carried = obj.__globals__
        for name in sorted(_global_names(obj.__code__)):
            if name in namespace or _is_dunder(name) or name not in carried:
                continue
            value = self._adopt(carried[name], memo, added)
            namespace[name] = added[name] = value
        return new

    # -- properties ----------------------------------------------------

    def _snapshot(self) -> bytes | None:
        try:
            return dumps_plain(self.properties)
        except SerializationError:
            return None

    def take_changed_properties(self, force: bool = False) -> dict | None:
        """A copy of the properties if they changed since last taken, else None.

        The engine calls this after each command and sends what it returns to
        the controller; the properties given to the constructor count as
        already sent (the engine registers with them).  Changes inside values
        (a list appended to) are seen too.  ``force`` returns them anyway.
        Properties that are not plain data (what the controller accepts, see
        :func:`plait.wire.serialize.check_plain`) are not returned: the
        reason is in ``properties_error`` (None once they are plain again).
        """
        try:
            data = dumps_plain(self.properties, "the properties")
        except SerializationError as exc:
            self.properties_error = f"the properties of {self._where()} cannot be sent: {exc}"
            return None
        self.properties_error = None
        if force or data != self._sent_properties:
            self._sent_properties = data
            return dict(self.properties)
        return None

    # -- the engine's entry point ----------------------------------------

    def handle(self, method: str, *args: Any,
               encode: Callable[[Any], bytes] | None = None) -> tuple[bool, bytes]:
        """Run engine command ``method`` with ``args``; return the reply.

        ``(True, encode(value))`` or ``(False, serialize(RemoteFailure))``;
        never raises.  ``method`` is one of :data:`METHODS`; ``args`` are the
        method's arguments, already deserialized.  ``encode`` defaults to
        :func:`serialize`; the engine passes one that sends large values on
        the bulk channel.  A value that cannot be encoded is reported naming
        the culprit (for ``pull``, the key).
        """
        try:
            value = self._dispatch(method, args)
            try:
                return True, (encode or serialize)(value)
            except SerializationError:
                self.serialize_value(method, args, value)  # raises, naming the culprit
                raise
        except BaseException as exc:
            return False, self.failure_payload(exc, method)

    def _dispatch(self, method: str, args: tuple) -> Any:
        if method not in METHODS:
            raise ValueError(f"unknown engine command {method!r} (known: {', '.join(METHODS)})")
        return getattr(self, method)(*args)

    def serialize_value(self, method: str, args: tuple, value: Any) -> bytes:
        """``value`` serialized; a value of ``pull`` that cannot be is named."""
        try:
            return serialize(value)
        except SerializationError:
            if method == "pull" and args and not isinstance(args[0], str):
                for key, item in zip(args[0], value, strict=False):
                    try:
                        serialize(item)
                    except SerializationError as exc:
                        raise SerializationError(
                            f"the value of {key!r} on {self._where()} cannot be sent: {exc}"
                        ) from None
            raise

    def failure_payload(self, exc: BaseException, method: str) -> bytes:
        """The serialized RemoteFailure reporting ``exc`` from ``method``; never raises.

        The traceback text leaves out plait's frames; a failed ``execute``'s
        result dict goes to ``extra['result']``.
        """
        extra: dict = {}
        try:
            result = exc.__dict__.pop("plait_result", None)
            if isinstance(result, dict):
                extra["result"] = result
        except Exception:
            pass
        failure = RemoteFailure.from_exception(
            exc, self.engine_id, method, tb=_user_traceback(exc.__traceback__), extra=extra
        )
        try:
            return serialize(failure)
        except BaseException:  # should not happen: a last resort that surely pickles
            return serialize(
                RemoteFailure(
                    str(failure.ename), str(failure.evalue), str(failure.traceback),
                    None, self.engine_id, method,
                )
            )
