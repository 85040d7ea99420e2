"""Enrollment's pure logic: secrets, secrets files, and the controller's record."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from plait.interfaces.engine import IEnrollment
from plait.kernel.controller.enrollment import Enrollment
from plait.kernel.controller.registry import EngineRegistry
from plait.scripts.ipengine import _furl_line
from plait.security import enrollment_key, profile_dirs
from plait.wire import enrollment
from plait.wire.errors import EnrollmentRefused

KEY = bytes(range(32))


def test_a_secret_is_checked_against_its_key():
    [one, two] = enrollment.issue(KEY, 2)
    assert one != two and one.startswith("pe1-")
    assert enrollment.check(KEY, one) == one.split("-")[1]
    with pytest.raises(ValueError, match="not issued for this controller"):
        enrollment.check(bytes(32), one)
    forged = one[:-1] + ("0" if one[-1] != "0" else "1")
    with pytest.raises(ValueError, match="not issued for this controller"):
        enrollment.check(KEY, forged)
    for bad in ("", "pe1-zz-00", "pe2-00-00", "x" * 300):
        with pytest.raises(ValueError):
            enrollment.check(KEY, bad)
    # one spelling only: a used secret written otherwise is no new secret
    _, nonce, mac = one.split("-")
    for respelt in (f"pe1-{nonce.upper()}-{mac}", f"pe1-{nonce[:8]} {nonce[8:]}-{mac}",
                    f"pe1-{nonce}-{mac.upper()}", f" {one}"):
        with pytest.raises(ValueError, match="not an enrollment secret"):
            enrollment.check(KEY, respelt)
    with pytest.raises(ValueError, match="32 bytes"):
        enrollment.issue(b"short", 1)


def test_the_controller_admits_a_secret_once_across_restarts(tmp_path):
    path = tmp_path / "enrollment.json"
    book = Enrollment(KEY, path)
    assert verifyObject(IEnrollment, book)
    [secret] = enrollment.issue(KEY, 1)
    book.admit(secret.encode(), b"m0", None)
    book.bind(0, b"m0")
    with pytest.raises(EnrollmentRefused, match="used before"):
        book.admit(secret.encode(), b"m1", None)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # a controller started again on the profile remembers both
    again = Enrollment(KEY, path)
    with pytest.raises(EnrollmentRefused, match="used before"):
        again.admit(secret.encode(), b"", None)
    again.admit(b"", b"m0", 0)  # the member key admits the claim of its id
    with pytest.raises(EnrollmentRefused, match="without that engine's member key"):
        again.admit(b"", b"other", 0)
    with pytest.raises(EnrollmentRefused, match="showed no enrollment secret"):
        again.admit(b"", b"m0", None)  # a member key claims an id, nothing else
    with pytest.raises(EnrollmentRefused, match="engine 7, which has no member key on record"):
        again.admit(b"", b"m0", 7)
    # a fresh secret admits an engine, but not into the id of one with a member key
    [fresh] = enrollment.issue(KEY, 1)
    with pytest.raises(EnrollmentRefused, match="without that engine's member key"):
        again.admit(fresh.encode(), b"thief", 0)
    again.admit(fresh.encode(), b"m2", None)


def test_an_unreadable_record_is_replaced_and_the_engines_go_on(tmp_path):
    path = tmp_path / "enrollment.json"
    path.write_text("{not json")
    book = Enrollment(KEY, path)
    [secret] = enrollment.issue(KEY, 1)
    book.admit(secret.encode(), b"", None)
    book.bind(0, b"")  # (the registration's end writes the record)
    assert json.loads(path.read_text())["used"] == [secret.split("-")[1]]


def test_the_registry_registers_nothing_its_enrollment_refuses(tmp_path):
    book = Enrollment(KEY, tmp_path / "e.json")
    registry = EngineRegistry(enrollment=book)

    class Engine:
        id = None

        def notifyOnDisconnect(self, *a):  # noqa: N802 (foolscap's name)
            pass

    with pytest.raises(EnrollmentRefused):
        registry.register(Engine(), "u1", {})
    assert registry.get_ids() == []
    [secret] = enrollment.issue(KEY, 1)
    assert registry.register(Engine(), "u2", {}, secret=secret.encode(), member=b"k") == 0
    # another admitted engine may not push it out by taking its uuid
    [other] = enrollment.issue(KEY, 1)
    with pytest.raises(EnrollmentRefused, match="engine 0 is registered with this uuid"):
        registry.register(Engine(), "u2", {}, secret=other.encode(), member=b"x")
    assert registry.get_ids() == [0]
    # joining again (its controller restarted), it shows its member key
    registry.unregister(0)
    assert registry.register(Engine(), "u2", {}, engine_id=0, rejoin=True, member=b"k") == 0


def test_a_secrets_file_gives_each_rank_its_line_or_each_engine_the_next(tmp_path):
    path = tmp_path / "s"
    secrets = enrollment.issue(KEY, 4)
    enrollment.write_secrets(path, secrets)
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        enrollment.write_secrets(path, secrets)
    assert enrollment.take_secret(path, 2) == secrets[2]  # by rank: the file stays
    with pytest.raises(ValueError, match="none for the engine of rank 9"):
        enrollment.take_secret(path, 9)
    # without a rank, engines started together each take another line
    taken: list[str] = []
    threads = [threading.Thread(target=lambda: taken.append(enrollment.take_secret(path, None)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(secrets)
    with pytest.raises(ValueError, match="no secret left"):
        enrollment.take_secret(path, None)
    with pytest.raises(ValueError, match="cannot open the secrets file"):
        enrollment.take_secret(tmp_path / "missing", None)
    os.chmod(path, 0o640)
    with pytest.raises(ValueError, match="may be read by other users"):
        enrollment.take_secret(path, 0)


@pytest.mark.parametrize("environ, slot", [
    ({}, None), ({"OMPI_COMM_WORLD_RANK": "3"}, 3), ({"PMI_RANK": "0"}, 0),
    ({"SLURM_PROCID": "5"}, 5), ({"SGE_TASK_ID": "1"}, 0), ({"PBS_ARRAY_INDEX": "4"}, 3),
    ({"LSB_JOBINDEX": "2"}, 1), ({"SGE_TASK_ID": "undefined"}, None),
])
def test_an_engine_knows_its_place_in_its_job(environ, slot):
    assert enrollment.slot_of(environ) == slot


def test_the_furl_line_of_a_fork_server_carries_the_credentials():
    furl = "pb://a@127.0.0.1:1/b"
    assert _furl_line(furl + "\n") == (furl, None, None)
    assert _furl_line(f"{furl} pe1-x - \n") == (furl, "pe1-x", None)
    assert _furl_line(f"{furl} - abc\n") == (furl, None, b"abc")
    with pytest.raises(SystemExit, match="no FURL on standard input"):
        _furl_line("")


def test_the_profiles_key_is_made_once_and_kept_private(tmp_path, monkeypatch):
    monkeypatch.setenv("PLAIT_DIR", str(tmp_path))
    dirs = profile_dirs(None)
    with pytest.raises(ValueError, match="there is no enrollment key"):
        enrollment_key(dirs, create=False)
    key = enrollment_key(dirs)
    assert enrollment_key(dirs) == key and len(key) == 32
    path: Path = dirs.security / "ipcontroller-enroll.key"
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(ValueError, match="may be read by other users"):
        enrollment_key(dirs)
    path.chmod(0o600)
    path.write_text("nonsense\n")
    with pytest.raises(ValueError, match="is not an enrollment key"):
        enrollment_key(dirs)
