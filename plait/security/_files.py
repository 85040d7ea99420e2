"""Where plait keeps its state, and how private files are written.

``$PLAIT_DIR`` (default ``~/.plait``) holds one folder per profile,
``profile_NAME`` (default ``profile_default``), with:

* ``security/``: the FURL files and the controller's certificates, each
  written atomically with mode 0600;
* ``log/``: one log file per process (0600);
* ``run/``: what ``ipcluster`` needs to find and stop a daemonized cluster.

The profile folder and each of these is private to its user (0700).
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

ENGINE_FURL = "ipcontroller-engine.furl"
MEC_FURL = "ipcontroller-mec.furl"
TC_FURL = "ipcontroller-tc.furl"
#: The capability of plait.parallel's Client (the later API generation).
PARALLEL_FURL = "ipcontroller-client.furl"
#: The key that issues engines' enrollment secrets (see plait.wire.enrollment).
ENROLL_KEY = "ipcontroller-enroll.key"


def plait_dir() -> Path:
    """``$PLAIT_DIR``, or ``~/.plait``."""
    return Path(os.environ.get("PLAIT_DIR") or Path.home() / ".plait").expanduser()


@dataclass(frozen=True)
class ProfileDirs:
    """The folders of one profile."""

    root: Path
    security: Path
    log: Path
    run: Path

    def furl_path(self, name: str) -> Path:
        return self.security / name

    @property
    def controller_stopped(self) -> Path:
        """Left by a controller that stopped cleanly (removed when one starts): its
        cluster's keeper (:mod:`plait.cluster.keeper`) starts only one that died again."""
        return self.run / "ipcontroller.stopped"

    @property
    def db(self) -> Path:
        """The hub's records (private: results may hold user data), made on first use."""
        path = self.root / "db"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        return path


def profile_dirs(profile: str | None = None, create: bool = True) -> ProfileDirs:
    """The folders of ``profile`` (default ``'default'``), created if asked."""
    name = profile or "default"
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid profile name {profile!r}")
    root = plait_dir() / f"profile_{name}"
    dirs = ProfileDirs(root, root / "security", root / "log", root / "run")
    if create:
        # Private, all of it: the logs hold tracebacks and printed output, the hub's
        # database holds results, the run folder the pids (as the security folder
        # holds the FURLs).  An older profile's folders are made private too.
        for path in (dirs.root, dirs.security, dirs.log, dirs.run):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if path.stat().st_mode & 0o077:
                try:
                    os.chmod(path, 0o700)
                except OSError as exc:
                    warnings.warn(f"{path} is open to other users and cannot be made "
                                  f"private: {exc.strerror}", UserWarning, stacklevel=2)
    return dirs


def write_private(path: Path | str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only (0600)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def enrollment_key(dirs: ProfileDirs, create: bool = True) -> bytes:
    """The profile's enrollment key, made (private) when it has none yet and
    ``create``; the controller and ``ipcluster`` may both be first, and then
    agree on one.  ValueError when the file is not a key, or others may read it."""
    from plait.wire.enrollment import KEY_BYTES, new_key

    path = dirs.security / ENROLL_KEY
    if not path.exists() and not create:
        raise ValueError(f"there is no enrollment key {path}: the controller that makes it "
                         f"has not started (or it runs on another host, and was not started "
                         f"by ipcluster)")
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(new_key().hex().encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)  # (never replaces a key another process made first)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    mode = path.stat().st_mode
    if mode & 0o077:
        raise ValueError(f"the enrollment key {path} may be read by other users (mode "
                         f"{mode & 0o777:04o}): whoever reads it can make engines; remove "
                         f"it (a new one is made) or 'chmod 600 {path}'")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path} is not an enrollment key ({KEY_BYTES} bytes in hex); "
                         f"remove it, and a new one is made")
    return key


#: The file that holds the FURL of each interface, by its RemoteInterface name.
FURL_FILES = {"plait.RIEngineRegistrar": ENGINE_FURL, "plait.RIMultiEngine": MEC_FURL,
              "plait.RITaskController": TC_FURL, "plait.RIParallel": PARALLEL_FURL}

_BASE32 = re.compile(r"[a-z2-7]+")
_HINT = re.compile(r"(?:tcp:)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")
_FORM = "pb://TUBID@HOST:PORT/SECRET"


def check_furl(text: str, source: str) -> str:
    """``text`` when it is a whole FURL; ValueError saying what is wrong with it
    (``source``: where it came from, for the message)."""
    where = f"the FURL in {source}"
    if not text.startswith("pb://"):
        raise ValueError(f"{source} does not contain a FURL (expected '{_FORM}')")
    body = text[len("pb://"):]
    if "@" not in body:
        raise ValueError(f"{where} is incomplete: it has no tub id and no address "
                         f"(expected '{_FORM}'); was the file cut short?")
    tub_id, rest = body.split("@", 1)
    if len(tub_id) != 32 or not _BASE32.fullmatch(tub_id):
        raise ValueError(f"{where} has a bad tub id {tub_id!r} (32 letters a-z and digits "
                         f"2-7, the hash of the controller's certificate)")
    location, slash, secret = rest.partition("/")
    for hint in location.split(","):
        match = _HINT.fullmatch(hint)
        if match is None or not 0 < int(match.group(2)) < 65536:
            cut = "" if slash else "; was the file cut short?"
            raise ValueError(f"{where} has a bad address {hint!r} (HOST:PORT expected){cut}")
    if not secret:
        raise ValueError(f"{where} has no secret (nothing after its address): was the file "
                         f"cut short?")
    if not _BASE32.fullmatch(secret):
        raise ValueError(f"{where} has a bad secret (letters a-z and digits 2-7 expected)")
    return text


def read_furl(path: Path | str) -> str:
    """Read a FURL file; raise a clear error when it is missing, not a whole FURL,
    or writable by others (a warning when others may read it, as ssh says of keys)."""
    path = Path(path)
    try:
        text = path.read_text().strip()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(
            f"FURL file {path} does not exist: is the controller running "
            f"(start one with 'ipcluster start' or 'ipcontroller'), and is this the "
            f"right profile or path?"
        ) from None
    if mode & 0o022:
        raise PermissionError(
            f"FURL file {path} is writable by other users (mode {mode & 0o777:04o}): anyone "
            f"could have made it name a controller of theirs. Refusing it; check it, then "
            f"'chmod 600 {path}'")
    if mode & 0o044:
        warnings.warn(f"FURL file {path} is readable by other users (mode "
                      f"{mode & 0o777:04o}): whoever reads it can use the controller as "
                      f"you; 'chmod 600 {path}'", UserWarning, stacklevel=2)
    return check_furl(text, str(path))
