"""What plait users import: ``from plait.kernel import client``.

``client.MultiEngineClient()`` connects to the MultiEngine interface of the
controller of the default profile (``$PLAIT_DIR/profile_default``);
``client.MultiEngineClient('/path/to/ipcontroller-mec.furl')`` uses that
file.  The ``Async...`` classes are the same clients for Twisted code.
"""

from __future__ import annotations

from zope.interface import classImplements

from plait.interfaces.multiengine import IFullBlockingMultiEngineClient, IPendingResult
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
    ResultAlreadyRetrieved,
    ResultNotCompleted,
    SerializationError,
)
from plait.kernel._mec import AsyncMultiEngineClient, wrap_result_list
from plait.kernel._mecmixin import InteractiveMultiEngineClient, MultiEngineHelpers
from plait.kernel._parallel import Mapper, ParallelFunction
from plait.kernel._pending import PendingResult
from plait.kernel._remote import StopLocalExecution, remote, strip_whitespace
from plait.kernel._serialized import Serialized

PlaitConnectionError = ConnectionError_

MultiEngineClient = derive_blocking(
    AsyncMultiEngineClient,
    "MultiEngineClient",
    mixins=(InteractiveMultiEngineClient, MultiEngineHelpers),
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
classImplements(MultiEngineClient, IFullBlockingMultiEngineClient)
classImplements(PendingResult, IPendingResult)
#: The name of the blocking client in the reference API.
FullBlockingMultiEngineClient = MultiEngineClient

__all__ = [
    "AsyncMultiEngineClient",
    "CompositeError",
    "EngineError",
    "FullBlockingMultiEngineClient",
    "IFullBlockingMultiEngineClient",
    "IPendingResult",
    "InteractiveMultiEngineClient",
    "InvalidEngineID",
    "Mapper",
    "MultiEngineClient",
    "ParallelFunction",
    "PendingResult",
    "PlaitConnectionError",
    "PlaitError",
    "QueueCleared",
    "QueueStatusList",
    "RemoteException",
    "ResultAlreadyRetrieved",
    "ResultList",
    "ResultNotCompleted",
    "SerializationError",
    "Serialized",
    "StopLocalExecution",
    "remote",
    "strip_whitespace",
    "wrap_result_list",
]

# -- the Task interface ----------------------------------------------------------------
from plait.kernel._errors import RemoteError  # noqa: E402
from plait.kernel._taskmap import TaskMapMixin, TaskMapper, TaskParallelFunction  # noqa: E402
from plait.kernel._tasks import MapTask, ResultNS, StringTask, Task, TaskResult  # noqa: E402
from plait.kernel._taskspec import (  # noqa: E402
    DependencyTimeout,
    InvalidTaskID,
    RecoveryLoopError,
    TaskAborted,
    TaskAlreadyCompleted,
    TaskSpecError,
)
from plait.kernel._tc import AsyncTaskClient, BlockingRunMixin  # noqa: E402
from plait.kernel._tcsubmit import TaskSubmissionError  # noqa: E402

TaskClient = derive_blocking(
    AsyncTaskClient,
    "TaskClient",
    mixins=(BlockingRunMixin, TaskMapMixin),
    doc="""A blocking client of the load-balanced Task interface.

    ``TaskClient(furl_or_file=None, profile=None)``: with no argument, the
    ``ipcontroller-tc.furl`` of the profile is used.  Submit
    :class:`StringTask` / :class:`MapTask` objects with ``run`` (it returns
    an int id at once), wait with ``barrier``, collect with
    ``get_task_result``; ``map``, ``mapper`` and ``parallel`` are
    dynamically load balanced.  Methods block and return their results.
    """,
)

__all__ += [
    "AsyncTaskClient",
    "DependencyTimeout",
    "InvalidTaskID",
    "MapTask",
    "RecoveryLoopError",
    "RemoteError",
    "ResultNS",
    "StringTask",
    "Task",
    "TaskAborted",
    "TaskAlreadyCompleted",
    "TaskClient",
    "TaskMapper",
    "TaskParallelFunction",
    "TaskResult",
    "TaskSpecError",
    "TaskSubmissionError",
]
