"""The parallel magics on a DirectView of the later generation, as ipyparallel has them.

``rc[:].activate()`` (or ``rc.activate(targets)``) makes a view the one of

``%px code``
    Runs the line on the view's engines.
``%%px [options]``
    Runs the cell; the options (see ``--help`` below) choose the engines
    (``--targets 0``, ``--targets ::2``, ``--targets 1,3``, ``--targets
    all``), blocking or not (``--block``, ``--noblock``), how the outputs
    are grouped (``--group-outputs=engine|order|type``, ``-e``, ``-r``),
    whether the cell runs here too (``--local``), where the AsyncResult
    is kept (``--out name``) and whether a line tells where it runs
    (``--verbose``).
``%pxresult``
    Shows the outputs of the last ``%px`` (waiting for them).
``%autopx``
    Toggles the mode where every cell typed runs on the engines, until
    ``%autopx`` is typed again.
``%pxconfig``
    Sets the defaults: ``--targets`` and ``--block``/``--noblock`` (the
    view's flags), ``--verbose``/``--no-verbose``; alone, shows them.

A blocking ``%px`` prints what the engines wrote (``[stdout:0] ...``) and
the values of final expressions (``Out[0]: ...``), then raises the engines'
errors, shown as the CompositeError (RemoteError for one engine) message;
``sys.last_value`` is the error.  A non-blocking one returns its
AsyncResult.  ``view.activate('_x')`` gives the magics ``%px_x``,
``%%px_x``, ``%pxresult_x``, ``%autopx_x`` and ``%pxconfig_x`` on that
view, leaving the others alone.  With ``--stream`` (blocking), what the
engines print is shown while the cell runs, as it comes; otherwise when the
cell has finished.

``%px`` and ``%autopx`` are shared with the kernel generation
(:mod:`plait.kernel.client._magics`): they run on whichever of
``mec.activate()`` and ``view.activate()`` was called last.
"""

from __future__ import annotations

import ast
import re
import signal
from collections.abc import Callable
from typing import Any

from plait.kernel.client import _magics as shared
from plait.kernel.client._magics import PxFrontEnd, concise, usage_error
from plait.wire.errors import PlaitError

_TARGETS_HELP = (
    "the engines to run on: all, an engine id (0), engine ids (1,3 or [1,3]) or a "
    "slice of the engine ids (::2, 1:)"
)


class ViewFrontEnd(PxFrontEnd):
    """The magics of one suffix on a DirectView (see the module documentation)."""

    def __init__(self, view: Any, suffix: str = ""):
        self.view = view
        self.suffix = suffix
        self.verbose = False
        self.stream = False  # %pxconfig --stream: stream by default
        self.last_result: Any = None

    # -- the magics --------------------------------------------------------------------------
    def px(self, shell: Any, line: str, cell: str | None) -> Any:
        """``%px{suffix} code`` (no options) or ``%%px{suffix} [options]`` and a cell."""
        if cell is None:
            code, options = line, _parse("px", self.suffix, "")
        else:
            code, options = cell, _parse("px", self.suffix, line)
        if not code.strip():
            raise usage_error(f"%px{self.suffix} runs code on the engines: %px{self.suffix} "
                              f"a = 1, or %%px{self.suffix} [options] and a cell")
        targets = self.targets(options.targets) if options.targets else None
        sig = _signal_of(options.signal_on_interrupt) if options.signal_on_interrupt else None
        block = self.view.block if options.block is None else options.block
        verbose = self.verbose if options.verbose is None else options.verbose
        ar = self.submit(code, targets, block, verbose)
        if options.save_name:
            shell.user_ns[options.save_name] = ar
        if options.local:  # here too, while the engines run it
            type(shell).run_cell(shell, code)  # the class's: not autopx's stand-in
        if not block:
            return ar
        stream = self.stream if options.stream is None else options.stream
        try:
            if stream:
                ar.stream_output()
            self.show(ar, options.groupby, result_only=stream)
        except KeyboardInterrupt:  # Ctrl-C: stop the engines' work too, unless told not to
            if sig is not None:
                engines = self.view.client._engine_ids(
                    self.view.targets if targets is None else targets)
                print(f"Keyboard interrupt: sending {sig.name} to engine(s) "
                      f"{_targets_text(engines)} (%pxresult{self.suffix} shows what they "
                      f"did)", flush=True)
                self.view.client.send_signal(sig, targets=engines)
            raise
        return None

    def pxresult(self, shell: Any, line: str) -> None:
        """``%pxresult{suffix} [-e|-r|--group-outputs=...] [-o name]``."""
        options = _parse("pxresult", self.suffix, line)
        if self.last_result is None:
            raise usage_error(f"%pxresult{self.suffix} shows the outputs of the last "
                              f"%px{self.suffix}, and there has been none yet")
        if options.save_name:
            shell.user_ns[options.save_name] = self.last_result
        self.show(self.last_result, options.groupby)

    def pxconfig(self, shell: Any, line: str) -> None:
        """``%pxconfig{suffix} [--targets T] [--block|--noblock] [--verbose|--no-verbose]``."""
        options = _parse("pxconfig", self.suffix, line)
        if options.targets:
            targets = self.targets(options.targets)
            try:
                self.view.set_flags(targets=targets)
            except PlaitError as exc:
                concise(exc)
                raise
        if options.block is not None:
            self.view.block = options.block
        if options.verbose is not None:
            self.verbose = options.verbose
        if options.stream is not None:
            self.stream = options.stream
        if not line.strip():
            print(f"%px{self.suffix}: targets {self.view.targets!r}, block "
                  f"{self.view.block}, verbose {self.verbose}, stream {self.stream}")

    def run_autopx_cell(self, shell: Any, cell: str, silent: bool) -> Any:
        block = self.view.block
        ar = self.submit(cell, None, block, self.verbose and not silent)
        if not block:
            return ar
        if silent:
            ar.get()
        else:
            self.show(ar, "type")
        return None

    # -- the parts ---------------------------------------------------------------------------
    def submit(self, code: str, targets: Any, block: bool, verbose: bool) -> Any:
        """Send ``code`` to the engines; its AsyncResult, also the last result."""
        if verbose:
            where = self.view.targets if targets is None else targets
            print(f"{'Parallel' if block else 'Async parallel'} execution on engine(s): "
                  f"{_targets_text(where)}")
        try:
            ar = self.view.execute(code, silent=False, targets=targets, block=False)
        except PlaitError as exc:  # no engines, an unknown engine id...
            concise(exc)
            raise
        self.last_result = ar
        return ar

    def show(self, ar: Any, groupby: str, result_only: bool = False) -> None:
        """Wait for ``ar``, print its outputs (its results alone: ``result_only``),
        then raise its error (concisely shown)."""
        ar.wait()
        ar.display_outputs(groupby, result_only=result_only)
        try:
            ar.get()
        except PlaitError as exc:
            concise(exc)
            raise

    def targets(self, text: str) -> Any:
        """The targets ``--targets text`` names (see :func:`parse_targets`)."""
        return parse_targets(text, self.view.client.ids)


def parse_targets(text: str, ids: list[int]) -> Any:
    """``--targets``: 'all'; an engine id (an int: results are one value); ids
    (``1,3``, ``[1, 3]``: a list); a slice of the registered ``ids`` (``::2``)."""
    text = text.strip()
    if text == "all":
        return "all"
    bad = usage_error(f"--targets {text!r}: {_TARGETS_HELP}")
    if ":" in text:
        inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        parts = inner.split(":")
        try:
            if len(parts) > 3:
                raise ValueError(text)
            selected = ids[slice(*(int(p) if p.strip() else None for p in parts))]
        except ValueError:
            raise bad from None
        if not selected:
            raise usage_error(f"--targets {text!r} selects none of the engines {ids}")
        return selected
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise bad from None
    if _engine_id(value):
        return value
    if isinstance(value, (list, tuple)) and value and all(_engine_id(v) for v in value):
        return list(value)
    raise bad


def _signal_of(name: str) -> signal.Signals:
    """``SIGINT``, ``INT`` or ``2`` as a signal; a UsageError for anything else."""
    text = name.strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise usage_error(f"--signal-on-interrupt {name!r} is not a signal "
                          f"(SIGINT, TERM, 2...)") from None


def _engine_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _targets_text(targets: Any) -> str:
    """Targets as the verbose line shows them (a long list shortened)."""
    if isinstance(targets, list) and len(targets) > 10:
        return f"{str(targets[:4])[:-1]}, ..., {str(targets[-4:])[1:]}"
    return str(targets)


# -- options ----------------------------------------------------------------------------------
_parsers: dict[tuple[str, str], Any] = {}


def _parser(magic: str, suffix: str) -> Any:
    """The option parser of ``magic`` ('px', 'pxresult' or 'pxconfig'), made once."""
    key = (magic, suffix)
    if key not in _parsers:
        from IPython.core.magic_arguments import MagicArgumentParser

        # (IPython's help formatter puts a % before the name)
        parser = MagicArgumentParser(prog=f"%px{suffix}" if magic == "px" else magic + suffix)
        if magic in ("px", "pxconfig"):
            _execution_options(parser, magic)
        if magic in ("px", "pxresult"):
            _output_options(parser)
        _parsers[key] = parser
    return _parsers[key]


def _execution_options(parser: Any, magic: str) -> None:
    add = parser.add_argument
    add("-t", "--targets", help=_TARGETS_HELP)
    add("-b", "--block", action="store_const", const=True, dest="block",
        help="wait for the engines and show their outputs")
    add("-a", "--noblock", action="store_const", const=False, dest="block",
        help="return the AsyncResult at once (%%pxresult shows the outputs later)")
    if magic == "px":
        add("--local", action="store_true", help="run the cell here too")
    add("-v", "--verbose", action="store_const", const=True, dest="verbose",
        help="print a line telling where the code runs")
    add("--no-verbose", action="store_const", const=False, dest="verbose",
        help="print no such line")
    add("--stream", action="store_const", const=True, dest="stream",
        help="show what the engines print while the cell runs, as it comes")
    add("--no-stream", action="store_const", const=False, dest="stream",
        help="show the output when the cell has finished (the default)")
    if magic == "px":
        add("--signal-on-interrupt", dest="signal_on_interrupt", default="SIGINT",
            metavar="SIGNAL", help="on Ctrl-C while blocking, send this signal to the "
            "engines (default SIGINT: it interrupts the code they run)")
        add("--no-signal-on-interrupt", dest="signal_on_interrupt", action="store_const",
            const=None, help="on Ctrl-C, stop waiting but leave the engines' work alone")


def _output_options(parser: Any) -> None:
    add = parser.add_argument
    add("--group-outputs", dest="groupby", choices=["engine", "order", "type"],
        default="type", help="type: all stdout, all stderr, then the results (the "
        "default); engine: each engine's outputs together; order: as type, the display "
        "outputs of the engines in turn")
    add("-e", dest="groupby", action="store_const", const="engine",
        help="the same as --group-outputs=engine")
    add("-r", dest="groupby", action="store_const", const="order",
        help="the same as --group-outputs=order")
    add("-o", "--out", dest="save_name", help="keep the AsyncResult under this name")


def _parse(magic: str, suffix: str, line: str) -> Any:
    """The options on ``line``; a UsageError with the usage when they are wrong."""
    from IPython.core.error import UsageError

    parser = _parser(magic, suffix)
    try:
        return parser.parse_argstring(line)
    except (UsageError, ValueError) as exc:  # bad options; unbalanced quotes
        usage = parser.format_usage().replace("::\n\n  ", "usage: ").rstrip()
        raise usage_error(f"%{parser.prog}: {exc}\n{usage}") from None


# -- activation -------------------------------------------------------------------------------
def activate(view: Any, suffix: str = "") -> None:
    """Make ``view`` the one of the ``%px{suffix}`` magics, and load them into IPython."""
    if not isinstance(suffix, str) or re.fullmatch(r"\w*", suffix) is None:
        raise ValueError(f"a magics suffix is made of letters, digits and _, not {suffix!r}")
    # the front ends of a view, by suffix, live on it: activated again, it finds its own
    front_ends = vars(view).setdefault("_magics_front_ends", {})
    if suffix not in front_ends:
        front_ends[suffix] = ViewFrontEnd(view, suffix)
    shell = shared.claim(suffix, front_ends[suffix])  # its last result, verbose flag kept
    if shell is not None:
        _register(shell, suffix)


def view_front_end(suffix: str) -> ViewFrontEnd:
    """The view front end of ``suffix``; a UsageError when the MultiEngine client has it."""
    front_end = shared.owner(suffix)
    if not isinstance(front_end, ViewFrontEnd):
        raise usage_error(
            f"%px{suffix} runs on the MultiEngineClient activated last, not on a view "
            f"(its results: %result); view.activate() makes a view the one of %px{suffix}")
    return front_end


def _register(shell: Any, suffix: str) -> None:
    """Register ``%pxresult{suffix}``, ``%pxconfig{suffix}`` and, for a suffix,
    ``%px{suffix}`` and ``%autopx{suffix}`` (the unsuffixed ones are shared)."""
    magics = shared.magics_of(shell)

    def px(line: str, cell: str | None = None) -> Any:
        return shared.owner(suffix).px(shell, line, cell)

    def autopx(line: str = "") -> None:
        magics.toggle_autopx(suffix)

    def pxresult(line: str = "") -> None:
        view_front_end(suffix).pxresult(shell, line)

    def pxconfig(line: str = "") -> None:
        view_front_end(suffix).pxconfig(shell, line)

    px.__doc__ = (f"Run code on the engines of the view activated with suffix {suffix!r}: "
                  f"%px{suffix} code, or %%px{suffix} [options] and a cell.\n\n"
                  + _parser("px", suffix).format_help())
    autopx.__doc__ = (f"Toggle sending every cell to the engines of the view of "
                      f"%px{suffix}, until %autopx{suffix} is typed again.")
    pxresult.__doc__ = (f"Show the outputs of the last %px{suffix}.\n\n"
                        + _parser("pxresult", suffix).format_help())
    pxconfig.__doc__ = (f"Set the defaults of %px{suffix}; alone, show them.\n\n"
                        + _parser("pxconfig", suffix).format_help())
    functions: list[tuple[Callable[..., Any], str, str]] = [
        (pxresult, "line", "pxresult"), (pxconfig, "line", "pxconfig")]
    if suffix:
        functions += [(px, "line_cell", "px"), (autopx, "line", "autopx")]
    for function, kind, name in functions:
        shell.register_magic_function(function, kind, name + suffix)
