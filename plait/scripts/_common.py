"""What the three commands share: options, logging, readiness notices."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

from plait.security import ProfileDirs, profile_dirs


def add_profile_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", default=None,
        help="profile name: state lives in $PLAIT_DIR/profile_NAME (default: 'default')",
    )


def add_notify_option(parser: argparse.ArgumentParser) -> None:
    # Used by ipcluster: a file descriptor on which to announce readiness.
    parser.add_argument("--notify-fd", type=int, default=None, help=argparse.SUPPRESS)


def notify(fd: int | None, message: str) -> None:
    """Write one line to the readiness descriptor and close it."""
    if fd is None:
        return
    try:
        os.write(fd, (message + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def freeze_startup_objects(collect: bool = True) -> None:
    """Exempt what this process made so far (its imported modules, mostly: some
    50,000 objects) from the cyclic garbage collector's passes.

    Called once a command has started, before it serves.  Every full
    collection would otherwise walk those objects again (about 40 ms a pass
    in an engine), and, in the fork server, write to the pages its forked
    engines share with it, copying them into each engine (see
    :func:`gc.freeze`).  What the process makes afterwards is collected as
    usual.  ``collect``: collect first, so that the import's garbage is not kept.
    """
    if collect:
        gc.collect()
    gc.freeze()


def start_logging(dirs: ProfileDirs, name: str, to_stderr: bool = False) -> Path:
    """Send Twisted's log to ``log/NAME-PID.log`` in the profile; returns its path."""
    from twisted.logger import (
        FilteringLogObserver,
        ILogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    path = dirs.log / f"{name}-{os.getpid()}.log"
    observers: list[ILogObserver] = [
        textFileLogObserver(open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                                 "a", buffering=1, encoding="utf-8"))  # private, as its folder
    ]
    if to_stderr:
        observers.append(
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            )
        )
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
    _bridge_stdlib_logging()
    return path


def _bridge_stdlib_logging() -> None:
    """Send what plait's thread-based parts log with :mod:`logging` to Twisted's log."""
    import logging

    from twisted.logger import Logger, LogLevel

    levels = {
        logging.DEBUG: LogLevel.debug, logging.INFO: LogLevel.info,
        logging.WARNING: LogLevel.warn, logging.ERROR: LogLevel.error,
        logging.CRITICAL: LogLevel.critical,
    }

    class ToTwisted(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            level = levels.get(record.levelno, LogLevel.info)
            Logger(namespace=record.name).emit(level, "{msg}", msg=self.format(record))

    logger = logging.getLogger("plait")
    logger.addHandler(ToTwisted())
    logger.setLevel(logging.INFO)


def dirs_for(profile: str | None) -> ProfileDirs:
    try:
        return profile_dirs(profile)
    except (ValueError, OSError) as exc:
        sys.exit(f"error: {exc}")
