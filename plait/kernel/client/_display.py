"""How the results of ``execute``/``get_result`` and ``queue_status`` look.

:class:`ResultList` is the list of per-engine result dicts that
``MultiEngineClient.execute`` and ``get_result`` return; its ``repr`` is the
``<Results List>`` display::

    <Results List>
    [0] In [4]: print(c)
    [0] Out[4]: 15

    [1] In [4]: print(c)
    [1] Out[4]: -5

Layout rules:

* every line starts with the engine id in brackets, so that the lines of one
  engine can be told apart (and grepped) in a long display;
* a command that printed nothing shows only its ``In`` line; one that did
  shows ``Out`` (its stdout) and/or ``Err`` (its stderr), then a blank line
  separating it from the next engine's entry;
* the input shown is the ``translated`` input (falling back to ``raw``),
  without surrounding blank lines; further lines of a multi-line input get
  an IPython-style ``...:`` prompt aligned under ``In [n]:``;
* stdout/stderr lose their trailing newlines; their further lines are
  indented under the text of the first one;
* an entry that is a failure (:class:`~plait.wire.errors.RemoteFailure`
  or an exception) shows ``[id] Error[n]: Type: message``, after the command's
  ``In``/``Out``/``Err`` lines when the failure carries them (the engine puts
  the result dict of a failed command in ``failure.extra['result']``).

:class:`QueueStatusList` is the list of ``(engine_id, status)`` pairs of
``queue_status``, where ``status`` is ``{'queue': [labels], 'pending': label}``::

    <Queue Status List>
    [0] pending: execute
    [0] queued:  push
    [0]          execute
    [1] idle

Both classes are plain lists otherwise and define ``_repr_pretty_`` so that
IPython and Jupyter show the same text.
"""

from __future__ import annotations

from typing import Any

from plait.wire.errors import RemoteFailure

_LABEL_WIDTH = 72


def _lines(text: str) -> list[str]:
    """``text`` without trailing newlines, split into lines (no ``\\r``)."""
    return [line.rstrip("\r") for line in text.rstrip("\r\n").split("\n")]


def _block(tag: str, first: str, rest: str, text: str) -> list[str]:
    """``text`` as display lines: ``tag first text[0]``, then ``tag rest ...``."""
    lines = _lines(text)
    out = [f"{tag} {first} {lines[0]}".rstrip()]
    out += [f"{tag} {rest} {line}".rstrip() for line in lines[1:]]
    return out


def _strip_blank_lines(text: str) -> str:
    lines = text.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def _format_result(result: dict, failure: Any = None) -> list[str]:
    """The display lines of one result dict (and of the failure it ended in)."""
    engine_id = result.get("id")
    tag = f"[{'?' if engine_id is None else engine_id}]"
    number = result.get("number")
    num = "?" if number is None else str(number)
    in_prompt = f"In [{num}]:"
    more_prompt = "...:".rjust(len(in_prompt))
    text_prompt = " " * len(in_prompt)  # "Out[n]:" and "Err[n]:" are as wide
    source = result.get("input", {}) or {}
    if isinstance(source, dict):
        code = source.get("translated", source.get("raw", ""))
    else:
        code = str(source)
    lines = _block(tag, in_prompt, more_prompt, _strip_blank_lines(str(code)))
    for key, name in (("stdout", "Out"), ("stderr", "Err")):
        text = result.get(key)
        if text:
            lines += _block(tag, f"{name}[{num}]:", text_prompt, str(text))
    if failure is not None:
        lines += _block(tag, f"Error[{num}]:", " " * len(f"Error[{num}]:"), _describe(failure))
    return lines


def _describe(failure: Any) -> str:
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {failure}"
    return str(failure)


def _format_entry(entry: Any) -> list[str]:
    if isinstance(entry, dict):
        return _format_result(entry)
    if isinstance(entry, RemoteFailure):
        result = entry.extra.get("result")
        if isinstance(result, dict):
            return _format_result(result, entry)
        tag = f"[{'?' if entry.engine_id is None else entry.engine_id}]"
        return _block(tag, "Error:", " " * len("Error:"), str(entry))
    if isinstance(entry, BaseException):
        return _block("[?]", "Error:", " " * len("Error:"), _describe(entry))
    return [f"[?] {entry!r}"]


class ResultList(list):
    """A list of execute/get_result dicts that displays as ``<Results List>``."""

    def __repr__(self) -> str:
        out = ["<Results List>"]
        for entry in self:
            lines = _format_entry(entry)
            out += lines
            if len(lines) > 1 or not isinstance(entry, dict):
                out.append("")
        while out[-1] == "":
            out.pop()
        return "\n".join(out)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython pretty-printer hook: the same text as ``repr``."""
        p.text("<Results List ...>" if cycle else repr(self))


def _label(label: Any) -> str:
    """A queue label on one line, shortened to fit the display."""
    text = label if isinstance(label, str) else repr(label)
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(text) > _LABEL_WIDTH:
        text = text[: _LABEL_WIDTH - 3] + "..."
    return text


class QueueStatusList(list):
    """A list of ``(engine_id, {'queue': [...], 'pending': ...})`` pairs that
    displays as ``<Queue Status List>``."""

    def __repr__(self) -> str:
        out = ["<Queue Status List>"]
        for entry in self:
            try:
                engine_id, status = entry
                queue = list(status.get("queue") or [])
                pending = status.get("pending")
            except (TypeError, ValueError, AttributeError):
                out.append(f"[?] {entry!r}")
                continue
            tag = f"[{engine_id}]"
            if pending is None and not queue:
                out.append(f"{tag} idle")
                continue
            if pending is not None:
                out.append(f"{tag} pending: {_label(pending)}")
            for i, label in enumerate(queue):
                out.append(f"{tag} {'queued: ' if i == 0 else ' ' * 8} {_label(label)}")
        return "\n".join(out)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython pretty-printer hook: the same text as ``repr``."""
        p.text("<Queue Status List ...>" if cycle else repr(self))
