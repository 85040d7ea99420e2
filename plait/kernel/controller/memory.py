"""Giving memory back to the system once a burst of tasks is gone.

A controller that queued a million tasks grew by about a gigabyte; once their
results are purged, Python has freed the objects but the C heap keeps the
pages.  :func:`release_memory` asks glibc to return its free pages
(``malloc_trim``); elsewhere (another libc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any

_libc: Any = None
_looked = False

#: Clearing this many finished tasks at once compacts the controller's indexes.
COMPACT_AFTER = 10_000


def release_memory() -> None:
    """Collect garbage, then return the C heap's free pages to the system (when
    glibc offers ``malloc_trim``).  Costs a few milliseconds: for after a purge."""
    global _libc, _looked
    gc.collect()
    if not _looked:
        _looked = True
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
        except OSError:
            libc = None
        _libc = libc if libc is not None and hasattr(libc, "malloc_trim") else None
    if _libc is not None:
        _libc.malloc_trim(0)
