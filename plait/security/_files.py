"""Where plait keeps its state, and how private files are written.

``$PLAIT_DIR`` (default ``~/.plait``) holds one folder per profile,
``profile_NAME`` (default ``profile_default``), with:

* ``security/`` (mode 0700): the FURL files and the controller's certificates,
  each written atomically with mode 0600;
* ``log/``: one log file per process;
* ``run/``: what ``ipcluster`` needs to find and stop a daemonized cluster.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

ENGINE_FURL = "ipcontroller-engine.furl"
MEC_FURL = "ipcontroller-mec.furl"
TC_FURL = "ipcontroller-tc.furl"
#: The capability of plait.parallel's Client (the later API generation).
PARALLEL_FURL = "ipcontroller-client.furl"


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
        for path in (dirs.root, dirs.log, dirs.run):
            path.mkdir(parents=True, exist_ok=True)
        dirs.security.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(dirs.security, 0o700)
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


def read_furl(path: Path | str) -> str:
    """Read a FURL file; raise a clear error when it is missing or not a FURL."""
    path = Path(path)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"FURL file {path} does not exist: is the controller running "
            f"(start one with 'ipcluster start' or 'ipcontroller'), and is this the "
            f"right profile or path?"
        ) from None
    if not text.startswith("pb://"):
        raise ValueError(f"{path} does not contain a FURL (expected 'pb://...')")
    return text
