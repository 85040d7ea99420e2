"""What the tests share: real clusters (``cluster``) and in-process fakes (``fakes``)."""

from __future__ import annotations

from pathlib import Path

#: The root of the repository, and the tests folder.
ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (for the daemons' configs)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_reactor(fn, *args, timeout=None, **kwargs):
    """Run ``fn(*args, **kwargs)`` in the reactor thread the blocking clients use,
    and wait for its result (or its Deferred's): how tests drive Twisted code."""
    from plait.kernel.client._reactor import call

    return call(fn, *args, timeout=timeout, **kwargs)
