"""The later API generation: ``import plait.parallel as ipp``.

Code written for ipyparallel runs after ``import plait.parallel as ipp``::

    rc = ipp.Client()                       # the cluster of the default profile
    dview = rc[:]                           # every engine, by id
    with ipp.Cluster(n=4) as rc: ...        # or start a cluster from Python
    dview.apply_sync(os.getpid)             # a list: one value per engine
    lview = rc.load_balanced_view()         # the scheduler chooses
    ar = lview.map_async(f, range(100))     # an AsyncMapResult
    for value in ar: ...                    # as they arrive

It runs on the controller and engines of the kernel generation
(:mod:`plait.kernel.client`), which both generations share: a ``mec.push``
is seen by ``rc[:].pull``, a TaskClient and a LoadBalancedView share one
scheduler.  This module is the public face: :data:`__all__` lists what users
import, each name once.  Errors are in :mod:`plait.parallel.error`.
"""

from __future__ import annotations

from plait.kernel.engine.shipped import Reference, depend, dependent, interactive, require
from plait.parallel import error
from plait.parallel._asyncresult import AsyncHubResult, AsyncMapResult, AsyncResult
from plait.parallel._client import Client
from plait.parallel._cluster import AsyncCluster, Cluster
from plait.parallel._dependency import Dependency
from plait.parallel._joblib import register_joblib_backend
from plait.parallel._view import DirectView, LoadBalancedView, RemoteFunction, View
from plait.wire.errors import CompositeError, RemoteError

__all__ = [
    "AsyncCluster",
    "AsyncHubResult",
    "AsyncMapResult",
    "AsyncResult",
    "Client",
    "Cluster",
    "CompositeError",
    "Dependency",
    "DirectView",
    "LoadBalancedView",
    "Reference",
    "RemoteError",
    "RemoteFunction",
    "View",
    "depend",
    "dependent",
    "error",
    "interactive",
    "register_joblib_backend",
    "require",
]


def _claim(names: list[str]) -> None:
    """Give the classes defined by this package their public module (not those
    shipped to engines or raised across processes: their module is the name
    they travel under)."""
    for name in names:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("plait.parallel._"):
            obj.__module__ = __name__


_claim(__all__)
