"""Enrollment: which processes the controller admits as engines.

A controller started with ``--enroll`` admits an engine only when it shows
an enrollment secret issued under the profile's key, never used before, or
the member key recorded for the engine id it claims (see
:mod:`plait.wire.enrollment` for the formats).  What it has seen is kept in
one file of the profile's db folder, written (atomically, and synced) once
per registration, by :meth:`Enrollment.bind`, before the registrar answers
the engine: a controller killed at any moment never admits a secret twice,
and the member keys of its engines outlive it, so that they join its
successor with their ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.logger import Logger
from zope.interface import implementer

from plait.interfaces.engine import IEnrollment
from plait.wire import enrollment
from plait.wire.errors import EnrollmentRefused

#: How to get a secret, for the messages of refusals.
HOW = ("engines that ipcluster starts get one; for an engine started by hand, issue "
       "one with 'ipcluster enroll' and start it with 'ipengine --enroll-file=FILE'")


@implementer(IEnrollment)
class Enrollment:
    """Checks engines' credentials against ``key``, remembering in ``path``."""

    log = Logger()

    def __init__(self, key: bytes, path: Path):
        self._key = key
        self._path = path
        self._used: set[str] = set()
        self._members: dict[int, str] = {}
        self._dirty = False  # what is in memory is not on disk yet
        try:
            state = json.loads(path.read_text())
            self._used = set(state.get("used", []))
            self._members = {int(k): v for k, v in state.get("members", {}).items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            # no record: secrets issued before may be admitted again, and engines
            # joining again need a new secret; say so, and go on
            self.log.error("the enrollment record {path} is unreadable ({e}); starting "
                           "a new one", path=str(path), e=exc)

    def admit(self, secret: bytes, member: bytes, claim: int | None) -> None:
        if claim is not None and claim in self._members:
            # an id with a member key goes to that key's holder only, secret or none
            if member and self._members[claim] == enrollment.member_digest(member):
                return
            raise EnrollmentRefused(f"this controller admits enrolled engines only, and this "
                                    f"one claims the id of engine {claim} without that "
                                    f"engine's member key")
        if not secret:
            why = ("it claims the id of engine {claim}, which has no member key on record "
                   "here, and shows no enrollment secret" if claim is not None
                   else "it showed no enrollment secret").format(claim=claim)
            raise EnrollmentRefused(f"this controller admits enrolled engines only, and "
                                    f"{why}: {HOW}")
        try:
            nonce = enrollment.check(self._key, secret.decode("ascii", "replace"))
        except ValueError as exc:
            raise EnrollmentRefused(f"its enrollment secret is refused: {exc}") from None
        if nonce in self._used:
            raise EnrollmentRefused("its enrollment secret was used before (each one admits "
                                    "one engine, once): issue a new one")
        self._used.add(nonce)  # (recorded on disk by bind, in the same call)
        self._dirty = True

    def bind(self, engine_id: int, member: bytes) -> None:
        digest = enrollment.member_digest(member) if member else None
        if self._members.get(engine_id) != digest:
            if digest is None:
                self._members.pop(engine_id, None)
            else:
                self._members[engine_id] = digest
            self._dirty = True
        if self._dirty:
            self._save()
            self._dirty = False

    def _save(self) -> None:
        """Write the record (atomically; synced, so that it survives the process)."""
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}")
        data = json.dumps({"used": sorted(self._used),
                           "members": {str(k): v for k, v in self._members.items()}})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
