"""Adapters: controller services published as foolscap remote objects.

This module is the one place where interfaces are registered onto the
network.  Each :class:`Publication` names the controller service it adapts
(by its zope interface), the adapter that turns it into a foolscap
``Referenceable``, the FURL file that carries the capability, and which
listener serves it (``'engine'`` or ``'client'``).

Adding an interface to the controller is writing one adapter and one
Publication, passed to the controller (``ipcontroller --adapter
module:NAME``); see ``tests/cluster/test_custom_interface.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zope.interface.interface import InterfaceClass

from plait.adapters.engine import FoolscapEngineRegistrar
from plait.adapters.multiengine import FoolscapMultiEngine
from plait.adapters.parallel import FoolscapParallel
from plait.adapters.task import FoolscapTaskController
from plait.interfaces.engine import IEngineRegistry
from plait.interfaces.multiengine import IMultiEngine
from plait.interfaces.parallel import IParallel
from plait.interfaces.task import ITaskController
from plait.security import ENGINE_FURL, MEC_FURL, PARALLEL_FURL, TC_FURL


@dataclass(frozen=True)
class Publication:
    """One interface of the controller offered on the network."""

    furl_name: str
    listener: str  # 'engine' or 'client'
    service: InterfaceClass
    adapter: Callable[[Any, Any], Any]  # (service, controller) -> Referenceable


def default_publications() -> list[Publication]:
    """The interfaces every controller offers."""
    return [
        Publication(
            ENGINE_FURL, "engine", IEngineRegistry,
            lambda svc, ctl: FoolscapEngineRegistrar(svc, ctl.blobs, ctl.channels["engine"]),
        ),
        Publication(
            MEC_FURL, "client", IMultiEngine,
            lambda svc, ctl: FoolscapMultiEngine(svc, ctl.blobs, ctl.channels["client"]),
        ),
        Publication(
            TC_FURL, "client", ITaskController,
            lambda svc, ctl: FoolscapTaskController(svc, ctl.blobs, ctl.channels["client"]),
        ),
        Publication(
            PARALLEL_FURL, "client", IParallel,
            lambda svc, ctl: FoolscapParallel(svc, ctl.blobs, ctl.channels["client"]),
        ),
    ]


def load_publication(spec: str) -> Publication:
    """Import ``module:NAME`` naming a :class:`Publication` (for ``--adapter``)."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--adapter wants 'module:NAME', got {spec!r}")
    obj = getattr(importlib.import_module(module_name), attr)
    if not isinstance(obj, Publication):
        raise TypeError(f"{spec} is a {type(obj).__name__}, not a plait Publication")
    return obj
