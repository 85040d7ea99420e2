"""Clusters: starting, watching and stopping a controller and its engines.

This area is what ``ipcluster`` and :class:`plait.parallel.Cluster` share:
it starts processes and knows their state.  It reads the readiness notices
the commands write; only to count batch engines, which may run on any node,
does it ask the controller, as a kernel-generation client.

Layout
------
::

    processes   pids: alive, started when, terminated for sure
    state       the state file of a profile's running cluster (run/ipcluster.json)
    config      a profile's cluster.toml: launcher and controller options
    launchers   how engines start: on this host (a fork server), under mpiexec, over SSH
    batch       engines as a Slurm, SGE, PBS or LSF job: one template mechanism
    control     a cluster's processes, started and stopped together
"""
