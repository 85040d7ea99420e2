"""The plait kernel: controller services, engines and clients.

Users import from :mod:`plait.kernel.client`; every other module here is private.
"""
