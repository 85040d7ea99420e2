"""The controller: the services of one plait cluster, and their wiring.

The services are plain Twisted code: they return Deferreds, know each other
by their zope interfaces (:mod:`plait.interfaces`) and know nothing of the
network.  :mod:`plait.adapters` publishes them as foolscap objects, and
:class:`~plait.kernel.controller.service.ControllerService` wires the two.

``registry``
    The engines connected now: ids, uuids, properties, observers.
``queue``
    The FIFO queue in front of each engine, shared by every interface.
``results``
    Results of non-blocking MultiEngine calls, kept until taken.
``multiengine``
    The MultiEngine service: commands on engines chosen by id.
``task``, ``taskids``, ``dispatch``, ``scheduler``
    The Task service: tasks queued, placed by a scheduler, sent to engines
    in batches, retried and recorded; the ids clients reserve.
``blobserver``
    The relay of the bulk data port.
``service``
    :class:`~plait.kernel.controller.service.ControllerService`, the Twisted
    service tree of one controller: services, Tubs, listeners, FURL files.
"""
