"""``plait.parallel.register_joblib_backend``: joblib on the engines.

``joblib.parallel_config(backend='plait')`` (or ``parallel_backend``) then
runs joblib's batches as tasks of a load-balanced view, so that
``joblib.Parallel`` and scikit-learn's ``n_jobs`` use the engines (see
:mod:`._joblib_backend`).  The engines need joblib too.
"""

from __future__ import annotations

from typing import Any

_default: list[Any] = []  # the Client of the default profile, made once, kept open


def register_joblib_backend(name: str = "plait", make_default: bool = False) -> None:
    """Register ``name`` as a joblib backend running on the engines, through a
    load-balanced view of ``plait.parallel.Client()`` (or of the ``view`` given
    to ``joblib.parallel_config(backend=name, view=...)``)."""
    from joblib.parallel import register_parallel_backend

    from plait.parallel._joblib_backend import PlaitBackend

    PlaitBackend.default_view = staticmethod(_default_view)
    register_parallel_backend(name, PlaitBackend, make_default=make_default)


def _default_view() -> Any:
    """A load-balanced view of ``plait.parallel.Client()``, connected once per
    process (each ``joblib.Parallel`` call would otherwise connect again)."""
    from plait.parallel._client import Client

    if not _default or _default[0]._closed:
        _default[:] = [Client()]
    return _default[0].load_balanced_view()
