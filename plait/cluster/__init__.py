"""Clusters: starting, watching and stopping a controller and its engines.

This area is what ``ipcluster`` and :class:`plait.parallel.Cluster` share:
it starts processes and knows their state, and never talks to a controller
over the network (it reads the readiness notices the commands write).

Layout
------
::

    processes   pids: alive, started when, terminated for sure
    state       the state file of a profile's running cluster (run/ipcluster.json)
    config      a profile's cluster.toml: launcher and controller options
    launchers   how engines start: on this host, under mpiexec
    control     a cluster's processes, started and stopped together
"""
