"""Graph dependencies as users write them: msg_ids, AsyncResults, Dependency sets.

``after=`` and ``follow=`` (flags of a LoadBalancedView) take a
:class:`Dependency`, an AsyncResult, a msg_id, or a list of those; they
become the :class:`~plait.wire.task.GraphDependency` a task carries.  The
controller decides when (``after``) and where (``follow``) the task may
run, and fails it with ImpossibleDependency when it never can.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from plait.wire.errors import InvalidDependency
from plait.wire.task import GraphDependency


class Dependency(set):
    """A set of msg_ids, and how they must have finished for a task to depend on them.

    ``all``: every one (else any one); ``success``: a task that succeeded
    counts; ``failure``: a task that failed counts (``failure=True,
    success=False`` makes a cleanup task, run when the others failed).
    """

    def __init__(self, dependencies: Any = (), all: bool = True, success: bool = True,
                 failure: bool = False):
        super().__init__(_msg_ids(dependencies))
        self.all = bool(all)
        self.success = bool(success)
        self.failure = bool(failure)
        if not (self.success or self.failure):
            raise ValueError("a Dependency must count successes, failures, or both")

    def as_dict(self) -> dict[str, Any]:
        return {"dependencies": sorted(self), "all": self.all, "success": self.success,
                "failure": self.failure}

    def __repr__(self) -> str:
        return (f"Dependency({sorted(self)!r}, all={self.all}, success={self.success}, "
                f"failure={self.failure})")


def _msg_ids(value: Any) -> list[str]:
    """The msg_ids of an AsyncResult, a msg_id, or an iterable of those."""
    from plait.parallel._asyncresult import AsyncResult

    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, AsyncResult):
        return list(value.msg_ids)
    if isinstance(value, Iterable):
        out: list[str] = []
        for item in value:
            if isinstance(item, (str, AsyncResult)) or (
                    isinstance(item, Iterable) and not isinstance(item, (bytes, dict))):
                out.extend(_msg_ids(item))
            else:
                raise TypeError(f"a dependency is a msg_id, an AsyncResult or a Dependency, "
                                f"not a {type(item).__name__}: {item!r}")
        return out
    raise TypeError(f"a dependency is a msg_id, an AsyncResult or a Dependency, not a "
                    f"{type(value).__name__}: {value!r}")


def graph_dependency(client: Any, value: Any, what: str) -> GraphDependency | None:
    """``value`` (after= or follow=) as the GraphDependency a task carries, or None.

    InvalidDependency for a msg_id that this controller did not issue.
    """
    from plait.parallel._asyncresult import AsyncResult

    # the common case first: AsyncResults (of this controller), whose task ids are known
    results = [value] if isinstance(value, AsyncResult) else value
    if (isinstance(results, (list, tuple)) and results
            and all(type(r) in _RESULT_TYPES for r in results)):
        if any(r._client._prefix != client._prefix for r in results):
            raise InvalidDependency(f"{what}: an AsyncResult of another controller")
        ids = sorted({taskid for r in results for taskid in r._ids})
        return GraphDependency(tuple(ids), True, True, False)
    if value is None or (isinstance(value, Iterable) and not isinstance(value, str)
                         and not _msg_ids(value)):
        return None
    if isinstance(value, Dependency):
        dependency = value
    else:
        dependency = Dependency(value)
    ids = []
    for msg_id in sorted(dependency):
        taskid = client._taskid(msg_id)
        if taskid is None:
            raise InvalidDependency(f"{what}: {msg_id!r} is not the msg_id of a task of this "
                                    f"controller")
        ids.append(taskid)
    return GraphDependency(tuple(ids), dependency.all, dependency.success, dependency.failure)


def _result_types() -> frozenset[type]:
    from plait.parallel._asyncresult import AsyncHubResult, AsyncMapResult, AsyncResult

    return frozenset({AsyncResult, AsyncMapResult, AsyncHubResult})


_RESULT_TYPES = _result_types()

