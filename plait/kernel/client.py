"""What plait users import: ``from plait.kernel import client``.

``client.MultiEngineClient()`` connects to the MultiEngine interface of the
controller of the default profile (``$PLAIT_DIR/profile_default``);
``client.MultiEngineClient('/path/to/ipcontroller-mec.furl')`` uses that
file.  The ``Async...`` classes are the same clients for Twisted code.
"""

from __future__ import annotations

from plait.kernel._blocking import derive_blocking
from plait.kernel._display import QueueStatusList, ResultList
from plait.kernel._errors import (
    CompositeError,
    ConnectionError_,
    EngineError,
    InvalidEngineID,
    PlaitError,
    QueueCleared,
    RemoteException,
    ResultNotCompleted,
    SerializationError,
)
from plait.kernel._mec import AsyncMultiEngineClient
from plait.kernel._pending import PendingResult

PlaitConnectionError = ConnectionError_

MultiEngineClient = derive_blocking(
    AsyncMultiEngineClient,
    "MultiEngineClient",
    shared=("targets", "block"),
    doc="""A blocking client of the MultiEngine interface.

    ``MultiEngineClient(furl_or_file=None, profile=None)``: with no argument,
    the ``ipcontroller-mec.furl`` of the profile is used.  Methods block and
    return results, or return a :class:`PendingResult` with ``block=False``.
    The attributes ``targets`` (default ``'all'``) and ``block`` (default
    True) are the defaults of the keyword arguments of the same names.
    """,
)

__all__ = [
    "AsyncMultiEngineClient",
    "CompositeError",
    "EngineError",
    "InvalidEngineID",
    "MultiEngineClient",
    "PendingResult",
    "PlaitConnectionError",
    "PlaitError",
    "QueueCleared",
    "QueueStatusList",
    "RemoteException",
    "ResultList",
    "ResultNotCompleted",
    "SerializationError",
]
