"""The parallel magics of IPython: ``%px``, ``%autopx`` and ``%result``.

They act on the *active* MultiEngine client, the one on which
``mec.activate()`` was called last, with its ``targets`` and ``block``
attributes:

``%px code``
    Runs one line of code on the engines (``%%px`` runs a whole cell) and
    returns what ``mec.execute`` returns.
``%result [n]``
    Shows the result of command ``n`` (default: the last) on each engine,
    through ``mec.get_result``.
``%autopx``
    Toggles a mode where every cell typed is sent to the engines instead of
    being run locally; typing ``%autopx`` again ends it.  Each cell's result
    (a ``<Results List>``, or a PendingResult when ``block`` is False) is
    printed.

``mec.activate()`` loads the magics into the running IPython; so does
``%load_ext plait``.  Errors raised on the engines are shown as the
CompositeError message, without a local traceback (``%debug`` and
``sys.last_value`` still reach the exception).

Both API generations share one IPython shell.  What ``%px{suffix}`` and
``%autopx{suffix}`` run on is a *front end* (:class:`PxFrontEnd`), kept by
suffix: ``mec.activate()`` claims the unsuffixed pair for the MultiEngine
client, and a view of :mod:`plait.parallel` claims them (or suffixed ones)
with :func:`claim`, so that ``%px`` goes to whichever was activated last.
``%result`` always belongs to the MultiEngine client.  The autopx mode (the
shell's ``run_cell`` replaced while it is on) and the concise display of
plait's errors (:func:`concise`, :func:`show_error`) serve both.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from plait.kernel.client._blocking import blocking_twin
from plait.wire.errors import PlaitError

_active: Any = None  # the active MultiEngine client

_NO_CLIENT = (
    "no active MultiEngineClient or view: create one and call its activate() method, "
    "e.g. mec = client.MultiEngineClient(); mec.activate() (or rc[:].activate() for a "
    "view of plait.parallel)"
)


class PxFrontEnd:
    """What ``%px{suffix}`` and ``%autopx{suffix}`` run on.

    ``px`` runs the magic (``cell`` is None for the line magic);
    ``run_autopx_cell`` runs a cell typed while autopx is on, printing what
    the user should see unless ``silent``, and raises the errors to show.
    """

    suffix = ""

    def check(self) -> None:
        """Raise a UsageError when there is nothing to run code on."""

    def px(self, shell: Any, line: str, cell: str | None) -> Any:
        raise NotImplementedError

    def run_autopx_cell(self, shell: Any, cell: str, silent: bool) -> Any:
        raise NotImplementedError

    def autopx_enabled_message(self) -> str:
        return f"%autopx{self.suffix} enabled"

    def autopx_disabled_message(self) -> str:
        return f"%autopx{self.suffix} disabled"


class _MultiEngineFrontEnd(PxFrontEnd):
    """The magics on the active MultiEngine client (the kernel generation)."""

    def check(self) -> None:
        active_client()

    def px(self, shell: Any, line: str, cell: str | None) -> Any:
        code = line if cell is None else cell
        if not code.strip():
            raise usage_error("%px runs code on the engines: %px a = 1 (or %%px and a cell)")
        client = active_client()
        print("Executing command on Controller")
        try:
            return client.execute(code)
        except Exception:
            show_error(shell)
            return None

    def run_autopx_cell(self, shell: Any, cell: str, silent: bool) -> Any:
        value = active_client().execute(cell)
        if not silent:
            print(repr(value))
        return value

    def autopx_enabled_message(self) -> str:
        return "Auto Parallel Enabled\nType %autopx to disable"

    def autopx_disabled_message(self) -> str:
        return "Auto Parallel Disabled"


MULTIENGINE = _MultiEngineFrontEnd()

_owners: dict[str, PxFrontEnd] = {}  # suffix -> the front end of %px{suffix}


def activate(client: Any) -> None:
    """Make ``client`` the active client, and load the magics into IPython."""
    global _active
    _active = client
    claim("", MULTIENGINE)


def claim(suffix: str, front_end: PxFrontEnd) -> Any:
    """Have ``%px{suffix}`` and ``%autopx{suffix}`` run on ``front_end`` from now
    on, and load the magics into the running IPython; that shell (or None)."""
    _owners[suffix] = front_end
    shell = running_shell()
    if shell is not None:
        load_ipython_extension(shell)
    return shell


def owner(suffix: str = "") -> PxFrontEnd:
    """The front end of ``%px{suffix}``; a UsageError when there is none."""
    front_end = _owners.get(suffix)
    if front_end is None:
        if suffix:
            raise usage_error(f"no view is active for %px{suffix}: call "
                              f"view.activate({suffix!r}) first")
        front_end = MULTIENGINE
    front_end.check()
    return front_end


def running_shell() -> Any:
    """The running IPython shell, or None (IPython is not imported here)."""
    ipython_module = sys.modules.get("IPython")
    return ipython_module.get_ipython() if ipython_module is not None else None


def active_client() -> Any:
    """The active client, usable from blocking code."""
    if _active is None:
        raise usage_error(_NO_CLIENT)
    return blocking_twin(_active)  # an asynchronous client was activated: block on it


def usage_error(message: str) -> Exception:
    """An IPython UsageError: IPython shows its message only."""
    from IPython.core.error import UsageError

    return UsageError(message)


def load_ipython_extension(ipython: Any) -> None:
    """Register the parallel magics with ``ipython`` (once per shell)."""
    if getattr(ipython, "_plait_magics", None) is None:
        magics = _magics_class()(ipython)
        ipython.register_magics(magics)
        ipython._plait_magics = magics


def unload_ipython_extension(ipython: Any) -> None:
    """Leave autopx mode if on (the magics stay registered)."""
    magics = getattr(ipython, "_plait_magics", None)
    if magics is not None and magics.autopx_enabled:
        magics.disable_autopx()


def magics_of(shell: Any) -> Any:
    """The parallel magics registered with ``shell`` (registered now if need be)."""
    load_ipython_extension(shell)
    return shell._plait_magics


# -- errors -----------------------------------------------------------------------------------
class _ConciseTraceback:
    """What IPython shows for a plait error marked by :func:`concise`: its message."""

    def __init__(self, exc: BaseException):
        text = str(exc)
        self.lines = f"{type(exc).__name__}: {text}".splitlines() if text else [
            type(exc).__name__]

    def __call__(self) -> list[str]:
        return list(self.lines)


def concise(exc: BaseException) -> BaseException:
    """Mark ``exc`` for IPython to show as its type and message only, without
    the local traceback (IPython's ``_render_traceback_`` protocol); ``exc``."""
    try:
        exc._render_traceback_ = _ConciseTraceback(exc)  # type: ignore[attr-defined]
    except AttributeError:  # an exception type without a __dict__
        pass
    return exc


def show_error(shell: Any) -> None:
    """Show the exception being handled (a plait error as its message only);
    ``sys.last_value`` is then that exception."""
    value = sys.exc_info()[1]
    if isinstance(value, PlaitError):
        concise(value)
    shell.showtraceback()


def _toggles_autopx(cell: str, suffix: str) -> bool:
    """Whether a cell typed in autopx mode ends it: ``%autopx`` (or the
    suffixed name that started it) alone, the ``%`` optional."""
    return re.fullmatch(rf"\s*%?autopx(?:{re.escape(suffix)})?\s*", cell) is not None


def _magics_class() -> type:
    """Build the Magics class (IPython is imported only when it is used)."""
    from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult
    from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class

    @magics_class
    class ParallelMagics(Magics):
        """``%px``, ``%autopx`` (on the client or view activated last) and ``%result``
        (on the active MultiEngine client)."""

        autopx_enabled = False
        _autopx_front_end: PxFrontEnd | None = None

        @line_cell_magic
        def px(self, line: str, cell: str | None = None) -> Any:
            """Execute code on the engines of the client or view activated last.

            ``%px a = 5`` runs one line; ``%%px`` runs the rest of the cell.  On
            a view of plait.parallel, ``%%px`` takes options: ``--targets T``
            (all, 0, 1,3, ::2), ``--block``/``--noblock``,
            ``--group-outputs=type|engine|order`` (``-e``, ``-r``), ``--local``
            (here too), ``--out name`` (keep the AsyncResult), ``--verbose``.
            """
            return owner("").px(self.shell, line, cell)

        @line_magic
        def result(self, line: str) -> Any:
            """Show the result of a command on each engine (``%result [n]``)."""
            text = line.strip()
            if text and not text.lstrip("-").isdigit():
                raise usage_error(f"%result takes a command number, not {text!r}")
            try:
                return active_client().get_result(int(text) if text else None)
            except Exception:
                show_error(self.shell)
                return None

        @line_magic
        def autopx(self, line: str = "") -> None:
            """Toggle sending every cell to the engines of the client or view
            activated last."""
            self.toggle_autopx("")

        def toggle_autopx(self, suffix: str) -> None:
            """``%autopx{suffix}``: leave autopx mode if on, else enter it."""
            if self.autopx_enabled:
                self.disable_autopx()
            else:
                self.enable_autopx(owner(suffix))  # fails now if there is nothing to run on

        def enable_autopx(self, front_end: PxFrontEnd = MULTIENGINE) -> None:
            # run_cell & co. are replaced on this shell instance while autopx is on
            # (disable_autopx drops the instance attributes): untyped for that.
            shell: Any = self.shell
            shell.run_cell = self._run_remote_cell
            shell.run_cell_async = self._run_remote_cell_async
            shell.should_run_async = lambda *args, **kwargs: False
            self.autopx_enabled = True
            self._autopx_front_end = front_end
            print(front_end.autopx_enabled_message())

        def disable_autopx(self) -> None:
            shell = self.shell
            for name in ("run_cell", "run_cell_async", "should_run_async"):
                shell.__dict__.pop(name, None)
            self.autopx_enabled = False
            front_end, self._autopx_front_end = self._autopx_front_end, None
            print((front_end or MULTIENGINE).autopx_disabled_message())

        async def _run_remote_cell_async(self, raw_cell: str, *args: Any, **kwargs: Any) -> Any:
            for name in ("transformed_cell", "preprocessing_exc_tuple"):
                kwargs.pop(name, None)
            return self._run_remote_cell(raw_cell, *args, **kwargs)

        def _run_remote_cell(self, raw_cell: str, store_history: bool = False,
                             silent: bool = False, shell_futures: bool = True,
                             cell_id: Any = None, **kwargs: Any) -> Any:
            """Stands in for ``shell.run_cell`` while autopx is on."""
            shell = self.shell
            assert shell is not None  # magics are registered with their shell
            front_end = self._autopx_front_end or MULTIENGINE
            info = ExecutionInfo(raw_cell, store_history, silent, shell_futures, cell_id)
            result = ExecutionResult(info)
            if not raw_cell.strip():
                return result
            if store_history:
                assert shell.history_manager is not None  # as in InteractiveShell.run_cell
                shell.history_manager.store_inputs(shell.execution_count, raw_cell, raw_cell)
                result.execution_count = shell.execution_count
            if _toggles_autopx(raw_cell, front_end.suffix):
                self.disable_autopx()
                if store_history:
                    shell.execution_count += 1
                return result
            shell.events.trigger("pre_execute")
            if not silent:
                shell.events.trigger("pre_run_cell", info)
            try:
                result.result = front_end.run_autopx_cell(shell, raw_cell, silent)
            except Exception as exc:
                result.error_in_exec = exc
                show_error(shell)
            if store_history:
                shell.execution_count += 1
            shell.events.trigger("post_execute")
            if not silent:
                shell.events.trigger("post_run_cell", result)
            return result

    return ParallelMagics
