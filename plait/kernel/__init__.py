"""The plait kernel: a controller, its engines and their clients.

Users import :mod:`plait.kernel.client`.  This docstring is for the people
who change plait: how the code is laid out, and the rules that keep it so.

Layout
------
plait runs as three kinds of process, and the code is grouped the same way,
beside what they share::

    plait/wire/               what processes agree on, byte for byte: every
                              exception (errors), pickling (serialize), the
                              task format (task), the bulk data format and its
                              peer side (bulk), the lean TLS channel (channel),
                              SSH tunnels and routing (tunnel), engines'
                              enrollment secrets (enrollment)
    plait/security/           profile folders, private files, certificates, Tubs,
                              the enrollment key
    plait/interfaces/         zope ``I...`` of the local services and foolscap
                              ``RI...`` of the wire, one module per service
    plait/adapters/           foolscap Referenceables that only delegate to a
                              service; the one place publications are listed
    plait/kernel/controller/  the controller's services (registry, queue,
                              results, multiengine, task, tasksession, taskids,
                              dispatch, scheduler, blobserver, enrollment,
                              status) and their wiring (service)
    plait/kernel/engine/      the engine process (process, commands,
                              interpreter, interrupts, taskrun) and the functions clients
                              ship to it by reference (shipped)
    plait/kernel/client/      the users' face (its ``__init__``) and the
                              client plumbing both API generations share
    plait/cluster/            starting and stopping a cluster's processes: the
                              launchers (this host, mpiexec, SSH, batch jobs),
                              a controller on another host (remote), the
                              profile's cluster.toml and state file; shared by
                              ipcluster and plait.parallel.Cluster
    plait/scripts/            the ipcontroller, ipengine and ipcluster front ends

Rules
-----
An area may import its own modules and the areas listed after it, nothing
else of plait, whether at the top of a module or inside a function.  An
entry names a package or one module; a more specific row overrides a
broader one; ``!name`` forbids a package or module even where a broader
entry allows it.  Every module belongs to a row (``plait`` is the package's
own ``__init__`` only).  ``tests/unit/test_layers.py`` reads this table,
checks every import of every module against it, and fails on any import
circle.

.. code-block:: text

    area                              may import
    plait.wire                        -
    plait.security                    plait.wire
    plait.interfaces                  plait.wire
    plait.adapters                    plait.wire plait.interfaces plait.security
    plait.kernel                      -
    plait.kernel._interpreter         plait.kernel.engine.interpreter
    plait.kernel.controller           plait.wire plait.interfaces !foolscap !plait.wire.channel
    plait.kernel.controller.service   plait.wire plait.interfaces plait.security plait.adapters plait.kernel.controller
    plait.kernel.engine               plait.wire plait.interfaces
    plait.kernel.engine.process       plait.wire plait.interfaces plait.security plait.adapters.engine_server plait.kernel.engine
    plait.kernel.client               plait.wire plait.interfaces plait.security plait.kernel.engine.shipped
    plait.parallel                    plait.wire plait.interfaces plait.security plait.kernel.client plait.kernel.engine.shipped plait.cluster
    plait.cluster                     plait.wire plait.security plait.kernel.client
    plait.scripts                     plait.wire plait.security plait.adapters plait.kernel.controller.service plait.kernel.engine.process plait.cluster
    plait.demo                        plait.kernel.client
    plait                             plait.kernel.client

In words: the wire vocabulary stands alone, and security knows only it; the services of the
controller know interfaces and wire formats but no network code (no
foolscap: the adapters turn them into remote objects, and
``controller.service`` wires the two together); the engine reaches the
network from ``process``, and is published through its one adapter;
clients talk to the controller only
through the wire formats and the interfaces, and know of the engine only the
functions they send it.  Controller, engine and client never import each
other otherwise.

Wire contract
-------------
Some names travel between processes and are resolved on arrival, so they
must not change: the classes of :mod:`plait.wire.errors` (pickled
exceptions), :class:`plait.wire.errors.RemoteFailure`, the task classes of
:mod:`plait.wire.task` (``EngineTask``, ``TaskBatch``, ``StashFetch``),
``Serialized.__reduce__`` (it names :func:`plait.wire.serialize.deserialize`),
the functions of :mod:`plait.kernel.engine.shipped`, and the
``__remote_name__`` of every RemoteInterface.  Each says so where it is
defined.
"""
