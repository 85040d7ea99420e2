"""A small custom interface plugged into a controller (see test_custom_interface).

It adapts the controller's engine registry into a read-only "census" that
reports how many engines there are and their uuids, published under its
own FURL file.  This is all it takes: an interface, an adapter, a
Publication.
"""

from __future__ import annotations

from foolscap.api import Referenceable, RemoteInterface
from foolscap.schema import DictOf, IntegerConstraint
from foolscap.slicers.unicode import UnicodeConstraint
from zope.interface import implementer

from plait.adapters import Publication
from plait.interfaces.engine import IEngineRegistry


class RIEngineCensus(RemoteInterface):
    __remote_name__ = "tests.RIEngineCensus"

    def count():
        return IntegerConstraint()

    def uuids():
        return DictOf(IntegerConstraint(), UnicodeConstraint(maxLength=64))


@implementer(RIEngineCensus)
class FoolscapEngineCensus(Referenceable):
    def __init__(self, registry):
        self.registry = registry

    def remote_count(self) -> int:
        return len(self.registry.get_ids())

    def remote_uuids(self) -> dict:
        return {i: self.registry.get_uuid(i) for i in self.registry.get_ids()}


CENSUS = Publication(
    furl_name="ipcontroller-census.furl",
    listener="client",
    service=IEngineRegistry,
    adapter=lambda registry, controller: FoolscapEngineCensus(registry),
)

NOT_A_PUBLICATION = 42
