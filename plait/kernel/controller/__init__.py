"""The controller: the services of one plait cluster, and their wiring.

The services are plain Twisted code: they return Deferreds, know each other
by their zope interfaces (:mod:`plait.interfaces`) and know nothing of
foolscap or of the connections clients and engines come by.
:mod:`plait.adapters` publishes them as foolscap objects, and
:class:`~plait.kernel.controller.service.ControllerService` wires the two.
(The blob relay is the one service with sockets of its own: the data port
is a plain TCP server carrying ciphertext, see :mod:`plait.wire.bulk`.)

``registry``
    The engines connected now: ids, uuids, properties, observers.
``queue``
    The FIFO queue in front of each engine, shared by every interface.
``results``
    Results of non-blocking MultiEngine calls, kept until taken.
``multiengine``
    The MultiEngine service: commands on engines chosen by id.
``task``, ``tasksession``, ``taskids``, ``dispatch``, ``scheduler``
    The Task service: tasks queued, placed by a scheduler, sent to engines
    in batches, retried and recorded; each client's session; the ids
    clients reserve.
``hub``, ``hubstore``
    The records of every task of both generations, and where they are kept.
``memory``
    Giving memory back to the system after a burst of tasks.
``blobserver``
    The relay of the bulk data port.
``service``
    :class:`~plait.kernel.controller.service.ControllerService`, the Twisted
    service tree of one controller: services, Tubs, listeners, FURL files.
"""
