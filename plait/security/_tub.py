"""Foolscap Tubs with plait's certificates and options.

Certificates are made with :mod:`cryptography` (a Tub without one would use
deprecated pyOpenSSL calls).  A controller keeps its certificates in the
security folder, so its tub ids, and therefore its FURLs, survive restarts.
"""

from __future__ import annotations

import datetime
import weakref
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from foolscap.api import Tub
from foolscap.negotiate import Negotiation
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from plait.security._files import write_private

#: Options every plait Tub gets.  Remote exception types are not exposed:
#: engine exceptions travel as values that plait builds itself.
TUB_OPTIONS = {
    "expose-remote-exception-types": False,
    "logLocalFailures": False,
    "logRemoteFailures": False,
}


def new_certificate_pem(common_name: str = "plait") -> bytes:
    """A fresh self-signed certificate and its private key, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_or_create_certificate(path: Path | str) -> bytes:
    """The PEM certificate stored at ``path``, created (mode 0600) if missing."""
    path = Path(path)
    if path.exists():
        return path.read_bytes()
    pem = new_certificate_pem(path.stem)
    write_private(path, pem)
    return pem


#: Connections a listener keeps that have not finished foolscap's negotiation (the
#: oldest goes first), and the seconds each may take: strangers cannot hold file
#: descriptors (foolscap's own limit is 120 s, with no cap on the number).  The cap
#: leaves room for hundreds of engines that connect at once (256 on 2 cores: their
#: negotiations wait for the CPU, and the oldest must not be dropped).
MAX_NEGOTIATING = 1000
NEGOTIATION_TIMEOUT = 10


class _CappedNegotiation(Negotiation):
    """Foolscap's negotiation, for plait's listeners: capped and timed out sooner.

    A connection counts as a stranger's until foolscap switches it to a
    Broker (the TLS upgrade and the tub id exchange are done); past
    :data:`MAX_NEGOTIATING` strangers on one listener, the oldest is dropped.
    """

    SERVER_TIMEOUT = NEGOTIATION_TIMEOUT
    _negotiating: weakref.WeakKeyDictionary[Any, dict[Any, None]] = weakref.WeakKeyDictionary()

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.isClient or getattr(self, "factory", None) is None:
            return
        pending = self._negotiating.setdefault(self.factory, {})
        pending[self] = None
        if len(pending) > MAX_NEGOTIATING:
            oldest = next(iter(pending))
            pending.pop(oldest, None)
            oldest.transport.abortConnection()

    def _settled(self) -> None:
        if not self.isClient and getattr(self, "factory", None) is not None:
            self._negotiating.get(self.factory, {}).pop(self, None)

    def switchToBanana(self, params: Any) -> None:
        self._settled()
        super().switchToBanana(params)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._settled()
        super().connectionLost(reason)


def make_tub(cert_pem: bytes | None = None, **options: object) -> Tub:
    """A Tub with ``cert_pem`` (fresh when None) and plait's options; what it
    listens on keeps few strangers, briefly (see :class:`_CappedNegotiation`)."""
    tub = Tub(certData=(cert_pem or new_certificate_pem()).decode())
    tub.negotiationClass = _CappedNegotiation
    for name, value in {**TUB_OPTIONS, **options}.items():
        tub.setOption(name, value)
    return tub


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit of open files to its hard limit (a controller
    holds a connection per engine and client); the ``(soft, hard)`` limits now."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


_client_tub: Tub | None = None


def client_tub() -> Tub:
    """The process-wide client Tub (created and started on first use).

    Must be called in the reactor thread.
    """
    global _client_tub
    if _client_tub is None:
        _client_tub = make_tub()
        _client_tub.startService()
    return _client_tub
