"""Foolscap Tubs with plait's certificates and options.

Certificates are made with :mod:`cryptography` (a Tub without one would use
deprecated pyOpenSSL calls).  A controller keeps its certificates in the
security folder, so its tub ids, and therefore its FURLs, survive restarts.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from foolscap.api import Tub

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


def make_tub(cert_pem: bytes | None = None, **options: object) -> Tub:
    """A Tub with ``cert_pem`` (fresh when None) and plait's options."""
    tub = Tub(certData=(cert_pem or new_certificate_pem()).decode())
    for name, value in {**TUB_OPTIONS, **options}.items():
        tub.setOption(name, value)
    return tub


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
