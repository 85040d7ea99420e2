"""Running the body of a ``with mec:`` block on the engines instead of here.

::

    with mec:
        client.remote()
        a = numpy.random.rand(3)
        b = a.sum()

On entering the block, the client finds the block's source (in the file, or
in the IPython cell, that is running), keeps what follows the ``remote()``
call, and executes it on the engines with ``mec.execute``.  Locally the body
starts with ``remote()``, which raises :class:`StopLocalExecution`; the
client's ``__exit__`` swallows it, so the rest of the body never runs here.

The first statement of the body must be a call of ``remote()`` (under any
prefix: ``client.remote()``, ``remote()``); otherwise entering the block
raises ValueError and nothing runs anywhere.
"""

from __future__ import annotations

import ast
import io
import linecache
import sys
import tokenize
import types
from collections.abc import Iterable, Iterator

from plait.wire.errors import StopLocalExecution

_FSTRING_START = getattr(tokenize, "FSTRING_START", -1)  # Python 3.12+
_FSTRING_END = getattr(tokenize, "FSTRING_END", -1)


def remote() -> None:
    """Mark the start of code that runs on the engines (see the module docs).

    Always raises :class:`StopLocalExecution`, which a client's ``with``
    block swallows; outside such a block the exception propagates.
    """
    raise StopLocalExecution(
        "remote() stops local execution: it belongs first in the body of a "
        "'with mec:' block, whose code then runs on the engines"
    )


def _is_remote_call(node: ast.stmt) -> bool:
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        return False
    func = node.value.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name == "remote" and not node.value.args and not node.value.keywords


def _tokens(lines: list[str]) -> Iterator[tokenize.TokenInfo]:
    return tokenize.generate_tokens(io.StringIO("".join(lines)).readline)


def _string_rows(lines: list[str]) -> set[int]:
    """Rows (from 1) that continue a multi-line string: not to be re-indented."""
    rows: set[int] = set()
    opened: list[int] = []
    try:
        for tok in _tokens(lines):
            if tok.type == tokenize.STRING:
                rows.update(range(tok.start[0] + 1, tok.end[0] + 1))
            elif tok.type == _FSTRING_START:
                opened.append(tok.start[0])
            elif tok.type == _FSTRING_END and opened:
                rows.update(range(opened.pop() + 1, tok.end[0] + 1))
    except (tokenize.TokenError, SyntaxError):
        pass
    return rows


def _dedent(lines: list[str]) -> list[str]:
    """Remove the indentation of the first code line from every line.

    Lines inside multi-line strings, and lines indented less, are kept as
    they are.
    """
    lines = [line.expandtabs(4) for line in lines]
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    width = len(first) - len(first.lstrip(" "))
    keep = _string_rows(lines)
    out = []
    for row, line in enumerate(lines, start=1):
        if row in keep:
            out.append(line)
        elif not line.strip():
            out.append("\n")
        elif len(line) - len(line.lstrip(" ")) >= width:
            out.append(line[width:])
        else:
            out.append(line)
    return out


def _block_end(lines: list[str]) -> int:
    """How many of ``lines`` form the first indented block.

    The block ends where the indentation falls below that of its first
    line (strings and comments do not count).
    """
    depth = 0
    try:
        for tok in _tokens(lines):
            if tok.type == tokenize.INDENT:
                depth += 1
            elif tok.type == tokenize.DEDENT:
                depth -= 1
                if depth <= 0:
                    return min(tok.start[0] - 1, len(lines))
    except (tokenize.TokenError, SyntaxError):
        return _block_end_by_indentation(lines)
    return len(lines)


def _block_end_by_indentation(lines: list[str]) -> int:
    """:func:`_block_end` for code that does not tokenize: by indentation only."""
    width = None
    end = 0
    for i, line in enumerate(line.expandtabs(4) for line in lines):
        text = line.strip()
        if not text:
            continue
        lead = len(line) - len(line.lstrip(" "))
        if width is None:
            width = lead
        elif lead < width and not text.startswith("#"):
            break
        end = i + 1
    return end


def strip_whitespace(source: str | Iterable[str]) -> str:
    """The code of a ``with mec:`` body that follows its ``remote()`` call.

    ``source`` is the body (a string or its lines), possibly followed by the
    code after the block: the block ends at the first code line indented
    less than the body's first line.  The body is dedented, checked to
    begin with a ``remote()`` call, and what follows that call is returned
    (ending with a newline; empty when nothing follows).  ValueError when
    the ``remote()`` call is missing or the body is not valid Python.
    """
    lines = source.splitlines(True) if isinstance(source, str) else list(source)
    lines = [line if line.endswith("\n") else line + "\n" for line in lines]
    body = _dedent(lines[: _block_end(lines)])
    try:
        tree = ast.parse("".join(body))
    except SyntaxError as exc:
        raise ValueError(f"the body of the with block is not valid Python: {exc}") from None
    if not tree.body or not _is_remote_call(tree.body[0]):
        raise ValueError(
            "the body of a 'with mec:' block must start with a remote() call "
            "(client.remote()): the code after it runs on the engines"
        )
    first = tree.body[0]
    rest = body[first.end_lineno:]
    while rest and not rest[-1].strip():
        rest.pop()
    return "".join(rest)


def _with_at(tree: ast.AST, lineno: int) -> ast.With | None:
    """The innermost ``with`` statement whose header spans line ``lineno``."""
    found = None
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and node.lineno <= lineno <= node.body[0].lineno:
            if found is None or node.lineno >= found.lineno:
                found = node
    return found


def block_body(lines: list[str], lineno: int) -> list[str]:
    """The lines of the body of the ``with`` statement at line ``lineno``.

    Uses the syntax tree of ``lines`` when they parse; otherwise the lines
    after ``lineno``, for :func:`strip_whitespace` to cut by indentation.
    """
    try:
        tree = ast.parse("".join(lines))
    except (SyntaxError, ValueError):
        return lines[lineno:]
    node = _with_at(tree, lineno)
    if node is None:
        raise ValueError(f"there is no with statement at line {lineno}")
    if node.body[0].lineno == node.lineno:
        raise ValueError("the body of a 'with mec:' block must start on a line of its own")
    return lines[node.body[0].lineno - 1 : node.body[-1].end_lineno]


def source_lines(frame: types.FrameType) -> list[str]:
    """The source lines of the file (or IPython cell) ``frame`` runs, if known."""
    filename = frame.f_code.co_filename
    linecache.checkcache(filename)
    return linecache.getlines(filename, frame.f_globals)


def ipython_cell_lines() -> list[str]:
    """The lines of the IPython cell being run (empty outside IPython)."""
    ipython_module = sys.modules.get("IPython")
    shell = ipython_module.get_ipython() if ipython_module is not None else None
    if shell is None:
        return []
    history = shell.history_manager.input_hist_parsed
    return history[-1].splitlines(True) if history else []
