"""Enrollment: the one-time secrets that make a process an engine.

The engine FURL lets a process reach the controller's registrar.  A
controller started with ``--enroll`` (as ``ipcluster`` and
``plait.parallel.Cluster`` start theirs) admits an engine only when it also
shows one of these, so that a copied ``ipcontroller-engine.furl`` alone makes
nobody an engine.  The formats here are what ``ipcluster``, the engines and
the controller agree on, byte for byte.

A **secret** (``pe1-NONCE-MAC``) is issued for one engine: NONCE is 16 random
bytes, MAC their HMAC-SHA256 under the profile's **enrollment key**
(``security/ipcontroller-enroll.key``, 32 random bytes, private).  Whoever
holds the key can issue secrets: ``ipcluster`` does, for every engine it
starts, and ``ipcluster enroll`` for engines started by hand.  The
controller checks the MAC, and admits each NONCE once: a secret that was
used, or copied after it was, admits nobody.

A **member key** is what an admitted engine keeps (32 random bytes, in its
memory only): the controller records its SHA-256 for the engine's id, and
an engine claiming that id later (joining again after a controller restart
or a network cut, or a supervisor's replacement of a dead engine) shows the
member key instead of a secret.

A **secrets file** holds one secret a line, private (0600).  An engine told
``--enroll-file=PATH`` takes the first line still there, which it removes
(under a lock: several engines started by hand may share a file); with
``--enroll-slot=rank`` (what the MPI and batch launchers pass), the line of
its rank in its MPI or batch job instead (:func:`slot_of`).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

#: The bytes of an enrollment key, of a nonce, and of a member key.
KEY_BYTES = 32
NONCE_BYTES = 16
MEMBER_BYTES = 32
#: The longest secret and member key the registrar accepts (the wire constraint).
SECRET_MAX = 128
MEMBER_MAX = 128
PREFIX = "pe1"
_FORM = re.compile(rf"{PREFIX}-[0-9a-f]{{{2 * NONCE_BYTES}}}-[0-9a-f]{{64}}")


def new_key() -> bytes:
    """A new enrollment key."""
    return secrets.token_bytes(KEY_BYTES)


def new_member() -> bytes:
    """A new member key (printable: it may travel on a line of text)."""
    return secrets.token_hex(MEMBER_BYTES).encode()


def _mac(key: bytes, nonce: bytes) -> str:
    return hmac.new(key, b"plait-enroll\0" + nonce, hashlib.sha256).hexdigest()


def issue(key: bytes, count: int) -> list[str]:
    """``count`` new secrets under ``key``."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"an enrollment key is {KEY_BYTES} bytes, not {len(key)}")
    out = []
    for _ in range(count):
        nonce = secrets.token_bytes(NONCE_BYTES)
        out.append(f"{PREFIX}-{nonce.hex()}-{_mac(key, nonce)}")
    return out


def check(key: bytes, secret: str) -> str:
    """The nonce of ``secret`` (hex) when it was issued under ``key``; ValueError
    saying what is wrong with it otherwise (it does not say whether it was used)."""
    if _FORM.fullmatch(secret) is None:  # (one spelling only: a nonce is used once)
        raise ValueError(f"it is not an enrollment secret (expected '{PREFIX}-NONCE-MAC', "
                         f"one line of a secrets file issued by ipcluster)")
    _, nonce_hex, mac = secret.split("-")
    if not hmac.compare_digest(_mac(key, bytes.fromhex(nonce_hex)), mac):
        raise ValueError("it was not issued for this controller (another profile's, or one "
                         "issued before its enrollment key changed)")
    return nonce_hex


def member_digest(member: bytes) -> str:
    """What the controller keeps of a member key."""
    return hashlib.sha256(b"plait-member\0" + member).hexdigest()


#: Where MPI launchers and batch systems put a process's place in its job:
#: (variable, its first value).  Array jobs count from 1.
SLOT_VARIABLES = (("OMPI_COMM_WORLD_RANK", 0), ("PMIX_RANK", 0), ("PMI_RANK", 0),
                  ("SLURM_PROCID", 0), ("SGE_TASK_ID", 1), ("PBS_ARRAY_INDEX", 1),
                  ("LSB_JOBINDEX", 1))


def slot_of(environ: Mapping[str, str]) -> int | None:
    """This process's place (0, 1, ...) in its MPI or batch job; None outside one."""
    for name, first in SLOT_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit() and int(value) >= first:
            return int(value) - first
    return None


def write_secrets(path: Path, secrets_: list[str]) -> None:
    """Write a secrets file (0600, made new: never one that already exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(s + "\n" for s in secrets_))
        f.flush()
        os.fsync(f.fileno())


def take_secret(path: Path | str, slot: int | None) -> str:
    """The secret of an engine from the secrets file ``path``: line ``slot``, or
    (``None``) the first line left, blanked in the file (overwritten by spaces
    in place: an engine killed meanwhile leaves every other line intact).
    ValueError saying what is wrong (no such file, a file others may read, no
    line left)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR if slot is None else os.O_RDONLY)
    except OSError as exc:
        raise ValueError(f"cannot open the secrets file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb+" if slot is None else "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise ValueError(f"the secrets file {path} may be read by other users (mode "
                             f"{mode & 0o777:04o}); refusing it: 'chmod 600 {path}', or "
                             f"issue new secrets")
        if slot is None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        data = f.read()
        lines = [line.strip() for line in data.splitlines() if line.strip()]
        if slot is not None:
            if slot >= len(lines):
                raise ValueError(f"the secrets file {path} has {len(lines)} secrets: none "
                                 f"for the engine of rank {slot}")
            return lines[slot].decode("ascii", "replace")
        if not lines:
            raise ValueError(f"the secrets file {path} has no secret left: issue more "
                             f"(ipcluster enroll)")
        start = data.index(lines[0])
        f.seek(start)
        f.write(b" " * len(lines[0]))
        f.flush()
        os.fsync(f.fileno())
        return lines[0].decode("ascii", "replace")
