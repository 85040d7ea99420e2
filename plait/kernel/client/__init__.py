"""What plait users import: ``from plait.kernel import client``.

``client.MultiEngineClient()`` connects to the MultiEngine interface of the
controller of the default profile (``$PLAIT_DIR/profile_default``);
``client.MultiEngineClient('/path/to/ipcontroller-mec.furl')`` uses that
file, and ``client.TaskClient()`` the Task interface.  The ``Async...``
classes are the same clients for Twisted code: every method returns a
Deferred.

This module is the public face of the client: :data:`__all__` lists every
name users import, each once.  The modules beside it (``_base``,
``_blocking``, ``_multiengine``, ``_task``...) are the plumbing, shared with
the later API generation, and private.  Names have their ``__module__``
pointing here, except the exceptions and :class:`Serialized`, defined in
:mod:`plait.wire` (the vocabulary every process shares: they travel between
processes pickled under the names they have there), and the zope interfaces
of the reference API, defined in :mod:`plait.interfaces`.
"""

from __future__ import annotations

import warnings
from typing import Any

from zope.interface import classImplements

from plait.interfaces.multiengine import IFullBlockingMultiEngineClient, IPendingResult
from plait.kernel.client._blocking import derive_blocking
from plait.kernel.client._display import QueueStatusList, ResultList
from plait.kernel.client._interactive import InteractiveMultiEngineClient
from plait.kernel.client._interactive import MultiEngineHelpers as _MultiEngineHelpers
from plait.kernel.client._mapping import Mapper, ParallelFunction
from plait.kernel.client._mapping import TaskMapper as _TaskMapper
from plait.kernel.client._mapping import TaskParallelFunction as _TaskParallelFunction
from plait.kernel.client._multiengine import AsyncMultiEngineClient
from plait.kernel.client._multiengine import wrap_result_list as wrap_result_list
from plait.kernel.client._pending import PendingResult
from plait.kernel.client._remote import remote
from plait.kernel.client._remote import strip_whitespace as strip_whitespace
from plait.kernel.client._task import AsyncTaskClient
from plait.kernel.client._task import BlockingRunMixin as _BlockingRunMixin
from plait.kernel.client._task import TaskClientHelpers as _TaskClientHelpers
from plait.kernel.client._tasks import MapTask, ResultNS, StringTask, Task, TaskResult
from plait.wire.errors import (
    CompositeError,
    DependencyTimeout,
    EngineError,
    InvalidEngineID,
    InvalidTaskID,
    PlaitConnectionError,
    PlaitError,
    PlaitWarning,
    QueueCleared,
    RecoveryLoopError,
    RemoteError,
    RemoteException,
    ResultAlreadyRetrieved,
    ResultNotCompleted,
    SerializationError,
    StopLocalExecution,
    TaskAborted,
    TaskAlreadyCompleted,
    TaskSpecError,
    TaskSubmissionError,
)
from plait.wire.serialized import Serialized

MultiEngineClient = derive_blocking(
    AsyncMultiEngineClient,
    "MultiEngineClient",
    mixins=(InteractiveMultiEngineClient, _MultiEngineHelpers),
    shared=("targets", "block"),
    doc="""A blocking client of the MultiEngine interface.

    ``MultiEngineClient(furl_or_file=None, profile=None)``: with no argument,
    the ``ipcontroller-mec.furl`` of the profile is used.  Methods block and
    return results, or return a :class:`PendingResult` with ``block=False``.
    The attributes ``targets`` (default ``'all'``) and ``block`` (default
    True) are the defaults of the keyword arguments of the same names.
    ``with mec:`` runs the body of the block, after its ``client.remote()``
    call, on the engines instead of here.
    """,
)
# (made at run time by derive_blocking: mypy-zope only knows classes from class statements)
classImplements(MultiEngineClient, IFullBlockingMultiEngineClient)  # type: ignore[misc]
classImplements(PendingResult, IPendingResult)
#: The name of the blocking client in the reference API.
FullBlockingMultiEngineClient = MultiEngineClient

TaskClient = derive_blocking(
    AsyncTaskClient,
    "TaskClient",
    mixins=(_BlockingRunMixin, _TaskClientHelpers),
    doc="""A blocking client of the load-balanced Task interface.

    ``TaskClient(furl_or_file=None, profile=None)``: with no argument, the
    ``ipcontroller-tc.furl`` of the profile is used.  Submit
    :class:`StringTask` / :class:`MapTask` objects with ``run`` (it returns
    an int id at once), wait with ``barrier``, collect with
    ``get_task_result``; ``map``, ``mapper`` and ``parallel`` are
    dynamically load balanced.  Methods block and return their results.
    """,
)

__all__ = [
    # the clients
    "AsyncMultiEngineClient",
    "AsyncTaskClient",
    "FullBlockingMultiEngineClient",
    "InteractiveMultiEngineClient",
    "MultiEngineClient",
    "TaskClient",
    # what they return, and what they take
    "MapTask",
    "Mapper",
    "ParallelFunction",
    "PendingResult",
    "QueueStatusList",
    "ResultList",
    "ResultNS",
    "Serialized",
    "StringTask",
    "Task",
    "TaskResult",
    "remote",
    # the interfaces of the reference API
    "IFullBlockingMultiEngineClient",
    "IPendingResult",
    # errors
    "CompositeError",
    "DependencyTimeout",
    "EngineError",
    "InvalidEngineID",
    "InvalidTaskID",
    "PlaitConnectionError",
    "PlaitError",
    "PlaitWarning",
    "QueueCleared",
    "RecoveryLoopError",
    "RemoteError",
    "RemoteException",
    "ResultAlreadyRetrieved",
    "ResultNotCompleted",
    "SerializationError",
    "StopLocalExecution",
    "TaskAborted",
    "TaskAlreadyCompleted",
    "TaskSpecError",
    "TaskSubmissionError",
]

#: Functions of the reference API's module, kept (out of ``__all__``) for code
#: written against it: ``wrap_result_list`` (the reference's ``wrapResultList``)
#: and ``strip_whitespace`` (the code of a ``with mec:`` block).
_REFERENCE_HELPERS = ["wrap_result_list", "strip_whitespace"]

#: Old names: still given (with a DeprecationWarning), for one release.
_DEPRECATED = {
    "TaskMapper": (_TaskMapper, "tc.mapper(), which returns a Mapper"),
    "TaskParallelFunction": (_TaskParallelFunction, "ParallelFunction(function, mapper)"),
    "ConnectionError_": (PlaitConnectionError, "PlaitConnectionError"),
}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        value, instead = _DEPRECATED[name]
        warnings.warn(f"plait.kernel.client.{name} is deprecated: use {instead}",
                      DeprecationWarning, stacklevel=2)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _claim(names: list[str]) -> None:
    """Give the objects exported here their public module (not those of :mod:`plait.wire`,
    whose module is the name they travel under)."""
    for name in names:
        obj = globals()[name]
        module = getattr(obj, "__module__", "")
        if module.startswith("plait.kernel.client"):
            obj.__module__ = __name__


_claim([*__all__, *_REFERENCE_HELPERS])
