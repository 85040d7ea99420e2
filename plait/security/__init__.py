"""Security of plait: profile folders, private files, certificates, FURLs, Tubs.

Capabilities are foolscap FURLs: whoever holds a FURL file may use the one
interface it names, and nothing else.  Every connection is TLS, authenticated
by the controller's certificate, whose hash is the tub id inside the FURL.
"""

from plait.security._files import (
    ENGINE_FURL,
    ENROLL_KEY,
    FURL_FILES,
    MEC_FURL,
    PARALLEL_FURL,
    TC_FURL,
    ProfileDirs,
    check_furl,
    enrollment_key,
    plait_dir,
    profile_dirs,
    read_furl,
    write_private,
)


def __getattr__(name: str):  # the Tub helpers import foolscap: load them on demand
    if name in ("client_tub", "load_or_create_certificate", "make_tub", "raise_open_files_limit"):
        from plait.security import _tub

        return getattr(_tub, name)
    raise AttributeError(f"module 'plait.security' has no attribute {name!r}")

__all__ = [
    "ENGINE_FURL",
    "ENROLL_KEY",
    "enrollment_key",
    "MEC_FURL",
    "PARALLEL_FURL",
    "TC_FURL",
    "ProfileDirs",
    "client_tub",
    "load_or_create_certificate",
    "make_tub",
    "plait_dir",
    "profile_dirs",
    "raise_open_files_limit",
    "read_furl",
    "write_private",
    "check_furl",
    "FURL_FILES",
]
