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
"""

from __future__ import annotations

import re
import sys
from typing import Any

from plait.kernel.client._blocking import blocking_twin
from plait.wire.errors import PlaitError

_active: Any = None

_AUTOPX = re.compile(r"\s*%?autopx\s*")


def activate(client: Any) -> None:
    """Make ``client`` the active client, and load the magics into IPython."""
    global _active
    _active = client
    ipython_module = sys.modules.get("IPython")
    shell = ipython_module.get_ipython() if ipython_module is not None else None
    if shell is not None:
        load_ipython_extension(shell)


def active_client() -> Any:
    """The active client, usable from blocking code."""
    if _active is None:
        from IPython.core.error import UsageError

        raise UsageError(
            "no active MultiEngineClient: create one and call its activate() method, "
            "e.g. mec = client.MultiEngineClient(); mec.activate()"
        )
    return blocking_twin(_active)  # an asynchronous client was activated: block on it


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


def _show_error(shell: Any) -> None:
    """Show the exception being handled: a plait error as its message only."""
    etype, value, _ = sys.exc_info()
    shell.showtraceback(exception_only=isinstance(value, PlaitError))


def _magics_class() -> type:
    """Build the Magics class (IPython is imported only when it is used)."""
    from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult
    from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class

    @magics_class
    class ParallelMagics(Magics):
        """``%px``, ``%autopx`` and ``%result`` on the active MultiEngine client."""

        autopx_enabled = False

        @line_cell_magic
        def px(self, line: str, cell: str | None = None) -> Any:
            """Execute code on the engines of the active client.

            ``%px a = 5`` runs one line; ``%%px`` runs the rest of the cell.
            """
            code = line if cell is None else cell
            if not code.strip():
                from IPython.core.error import UsageError

                raise UsageError("%px runs code on the engines: %px a = 1 (or %%px and a cell)")
            client = active_client()
            print("Executing command on Controller")
            try:
                return client.execute(code)
            except Exception:
                _show_error(self.shell)
                return None

        @line_magic
        def result(self, line: str) -> Any:
            """Show the result of a command on each engine (``%result [n]``)."""
            text = line.strip()
            if text and not text.lstrip("-").isdigit():
                from IPython.core.error import UsageError

                raise UsageError(f"%result takes a command number, not {text!r}")
            try:
                return active_client().get_result(int(text) if text else None)
            except Exception:
                _show_error(self.shell)
                return None

        @line_magic
        def autopx(self, line: str = "") -> None:
            """Toggle sending every cell to the engines of the active client."""
            if self.autopx_enabled:
                self.disable_autopx()
            else:
                active_client()  # fail now if there is none
                self.enable_autopx()

        def enable_autopx(self) -> None:
            # run_cell & co. are replaced on this shell instance while autopx is on
            # (disable_autopx drops the instance attributes): untyped for that.
            shell: Any = self.shell
            shell.run_cell = self._run_remote_cell
            shell.run_cell_async = self._run_remote_cell_async
            shell.should_run_async = lambda *args, **kwargs: False
            self.autopx_enabled = True
            print("Auto Parallel Enabled")
            print("Type %autopx to disable")

        def disable_autopx(self) -> None:
            shell = self.shell
            for name in ("run_cell", "run_cell_async", "should_run_async"):
                shell.__dict__.pop(name, None)
            self.autopx_enabled = False
            print("Auto Parallel Disabled")

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
            info = ExecutionInfo(raw_cell, store_history, silent, shell_futures, cell_id)
            result = ExecutionResult(info)
            if not raw_cell.strip():
                return result
            if store_history:
                assert shell.history_manager is not None  # as in InteractiveShell.run_cell
                shell.history_manager.store_inputs(shell.execution_count, raw_cell, raw_cell)
                result.execution_count = shell.execution_count
            if _AUTOPX.fullmatch(raw_cell):
                self.disable_autopx()
                if store_history:
                    shell.execution_count += 1
                return result
            shell.events.trigger("pre_execute")
            if not silent:
                shell.events.trigger("pre_run_cell", info)
            try:
                value = active_client().execute(raw_cell)
            except Exception as exc:
                result.error_in_exec = exc
                _show_error(shell)
            else:
                result.result = value
                if not silent:
                    print(repr(value))
            if store_history:
                shell.execution_count += 1
            shell.events.trigger("post_execute")
            if not silent:
                shell.events.trigger("post_run_cell", result)
            return result

    return ParallelMagics
