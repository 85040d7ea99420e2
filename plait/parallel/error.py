"""The errors of ``plait.parallel``: one hierarchy with the kernel generation's.

These are the very classes of :mod:`plait.kernel.client` (defined in
:mod:`plait.wire.errors`, the module every process shares): a
``CompositeError`` raised by a view is the one ``mec.execute`` raises.
"""

from plait.wire.errors import (
    ClusterError,
    CompositeError,
    DependencyTimeout,
    EngineError,
    ImpossibleDependency,
    InvalidDependency,
    InvalidEngineID,
    InvalidTaskID,
    NoEnginesRegistered,
    PlaitConnectionError,
    PlaitError,
    PlaitWarning,
    QueryError,
    RemoteError,
    SerializationError,
    TaskAborted,
    TaskTimeout,
    TimeoutError,
    UnmetDependency,
)

__all__ = [
    "ClusterError",
    "CompositeError",
    "DependencyTimeout",
    "EngineError",
    "ImpossibleDependency",
    "InvalidDependency",
    "InvalidEngineID",
    "InvalidTaskID",
    "NoEnginesRegistered",
    "PlaitConnectionError",
    "PlaitError",
    "PlaitWarning",
    "QueryError",
    "RemoteError",
    "SerializationError",
    "TaskAborted",
    "TaskTimeout",
    "TimeoutError",
    "UnmetDependency",
]
