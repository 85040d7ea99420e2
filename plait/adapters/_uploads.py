"""What every adapter whose callers send large payloads shares."""

from __future__ import annotations

from typing import Any


class OffersUploads:
    """Mixin: ``remote_open_upload`` for adapters holding the controller's
    :class:`~plait.kernel.controller.blobserver.BlobServer` as ``blobs``."""

    blobs: Any

    def remote_open_upload(self, size: int, readers: int) -> tuple[bytes, bytes, tuple]:
        """Reserve a blob of ``size`` bytes for ``readers`` downloads:
        ``(upload token, blob id, data port address)``."""
        token, blob_id = self.blobs.create(size, readers)
        return token, blob_id, self.blobs.address
