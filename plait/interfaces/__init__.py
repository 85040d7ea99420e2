"""Interfaces of plait, one module per service.

Local services are declared with :mod:`zope.interface` (``I...``); what crosses
the network is declared as foolscap ``RemoteInterface`` (``RI...``) with a
constraint on every argument and return value.  This package imports only
:mod:`plait.wire`.

Wire contract: the ``__remote_name__`` of each RemoteInterface is how the
two ends of a connection recognise it; keep those names.
"""
