"""The joblib backend that :func:`plait.parallel.register_joblib_backend` registers.

Imported only once joblib is wanted (joblib is not a dependency of plait).
Each batch joblib dispatches is one task of a load-balanced view; joblib's
callback runs in the client's callback thread (see :mod:`._callbacks`), where
joblib dispatches the next batches.
"""

from __future__ import annotations

from typing import Any

from joblib._parallel_backends import ParallelBackendBase


class PlaitBackend(ParallelBackendBase):
    """joblib's batches as tasks of ``view`` (default: a load-balanced view of
    ``plait.parallel.Client()``, made at the first ``configure``)."""

    #: () -> the view used when none is given (set by register_joblib_backend)
    default_view: Any = None
    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = -1

    def __init__(self, view: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.view = view
        self._outstanding: set[Any] = set()

    def _the_view(self) -> Any:
        if self.view is None:
            self.view = type(self).default_view()
        return self.view

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The engines the view may use (n_jobs=-1 or None; 2 at least, as joblib
        would run the calls in this process with 1), else ``n_jobs`` (at most
        that many: joblib sizes its batches by it; 1 runs them here)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 has no meaning")
        view = self._the_view()
        targets = view.targets
        if targets is None:
            engines = len(view.client.ids)
        elif isinstance(targets, int):
            engines = 1
        else:
            engines = len(set(targets) & set(view.client.ids))
        # never 1 unless asked: joblib runs the calls in this process then
        engines = max(engines, 2)
        if n_jobs is None or n_jobs < 0:
            return engines
        return min(n_jobs, engines)

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, **backend_kwargs: Any) -> int:
        if "view" in backend_kwargs:
            self.view = backend_kwargs.pop("view")
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Any, callback: Any = None) -> Any:
        ar = self._the_view().apply_async(func)
        self._outstanding.add(ar)
        ar.add_done_callback(self._outstanding.discard)
        if callback is not None:
            ar.add_done_callback(callback)
        return ar

    def retrieve_result_callback(self, out: Any) -> Any:
        return out.get()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        for ar in list(self._outstanding):
            if not ar.done():
                try:
                    ar.abort()
                except Exception:
                    pass  # finished meanwhile
        self._outstanding.clear()
