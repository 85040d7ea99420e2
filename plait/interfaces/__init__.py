"""Interfaces of plait.

Local services are declared with :mod:`zope.interface` (``I...``); what crosses
the network is declared as foolscap ``RemoteInterface`` (``RI...``) with a
constraint on every argument and return value.
"""
