"""plait: interactive parallel computing for Python.

The user-facing API lives in :mod:`plait.kernel.client`.  ``%load_ext plait``
in IPython loads the parallel magics (``%px``, ``%autopx``, ``%result``).
How the code is laid out, and its rules: :mod:`plait.kernel`.
"""

__version__ = "0.1.0"


def load_ipython_extension(ipython):  # pragma: no cover - thin shim
    """Register plait's parallel magics with an IPython shell."""
    from plait.kernel.client._magics import load_ipython_extension as _load

    _load(ipython)
