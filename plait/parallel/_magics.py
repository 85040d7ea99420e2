"""The parallel magics on a view of the later generation (see :mod:`plait.kernel.client._magics`)."""

from __future__ import annotations

from typing import Any


def activate(view: Any, suffix: str = "") -> None:
    """Make ``view`` the one of the ``%px{suffix}`` magics, and load them into IPython."""
    from plait.kernel.client import _magics

    _magics.activate(view)
