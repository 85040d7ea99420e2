"""``ipengine``: start one plait engine and connect it to a controller.

By default the engine FURL is read from the profile's security folder;
``--furl-file=PATH`` names another file (``-`` reads the FURL from stdin,
as a line that may go on with ``SECRET MEMBER``: its enrollment
credentials, ``-`` for either that it has not; a fork server's engines get
theirs so).  ``--enroll-file=PATH`` gives the engine a one-time enrollment
secret, for a controller that admits enrolled engines only (see
:mod:`plait.wire.enrollment`).
``--ssh=user@host`` reaches the controller through an SSH tunnel to that host
(an engine behind NAT, or outside the login node that leads to the
controller); see :mod:`plait.wire.tunnel`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import sys

from plait.scripts._common import (
    add_notify_option,
    add_profile_option,
    dirs_for,
    freeze_startup_objects,
    notify,
    start_logging,
)
from plait.security import ENGINE_FURL, read_furl
from plait.wire.enrollment import slot_of, take_secret


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipengine", description="Start a plait engine.")
    add_profile_option(p)
    p.add_argument("--furl-file", default=None,
                   help="the engine FURL file (default: the profile's ipcontroller-engine.furl)")
    p.add_argument("--enroll-file", default=None, metavar="PATH",
                   help="a file of enrollment secrets (from 'ipcluster enroll'): the engine "
                        "takes the first line left, which it removes")
    p.add_argument("--enroll-slot", choices=("first", "rank"), default="first",
                   help="'rank': take the line of this engine's rank in its MPI or batch job "
                        "instead (each rank its own line; the file stays as it is)")
    p.add_argument("--no-channel", action="store_true",
                   help="take commands through foolscap only, not the faster command channel "
                        "(for networks that let only the engine port through)")
    p.add_argument("--reconnect", type=float, default=0.0, metavar="SECONDS",
                   help="after losing the controller, keep trying to join it again for "
                        "this long, keeping the namespace (default 0: exit at once)")
    p.add_argument("--ssh", default=None, metavar="USER@HOST",
                   help="reach the controller through an SSH tunnel to this host")
    p.add_argument("--sshkey", default=None, metavar="FILE",
                   help="the identity file for --ssh")
    p.add_argument("--ssh-args", default="", metavar="OPTIONS",
                   help="more options for ssh, in one string (e.g. '-p 2222')")
    p.add_argument("--ssh-command", default=None, metavar="COMMAND",
                   help="the ssh command (default: $PLAIT_SSH_COMMAND, else ssh)")
    p.add_argument("--memory-limit", type=float, default=None, metavar="MB",
                   help="exit, saying why, when this engine's resident memory passes MB "
                        "(what it ran fails with an EngineError saying so)")
    p.add_argument("--engine-id", type=int, default=None, help=argparse.SUPPRESS)
    # (a supervisor's: the id of the engine this one replaces)
    p.add_argument("--notify-socket", default=None, metavar="PATH",
                   help=argparse.SUPPRESS)  # a launcher's: "engine ID PID" once registered
    add_notify_option(p)
    return p


#: Where MPI launchers put a process's rank and the job's size (Open MPI, then
#: MPICH / Intel MPI and PMIx-based launchers).
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def mpi_properties(environ: dict[str, str] | os._Environ = os.environ) -> dict:
    """``{'rank': r, 'size': s}`` when this process runs under an MPI launcher, else {}."""
    props = {}
    for key, names in (("rank", RANK_VARIABLES), ("size", SIZE_VARIABLES)):
        for name in names:
            value = environ.get(name, "")
            if value.isdigit():
                props[key] = int(value)
                break
    return props if "rank" in props else {}


def _announce(path: str | None, engine_id: int) -> None:
    """Tell the launcher listening on the unix socket ``path`` this engine registered."""
    if path is None:
        return
    address = "\0" + path[1:] if path.startswith("@") else path  # @: Linux's abstract names
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(address)
            sock.sendall(f"engine {engine_id} {os.getpid()}\n".encode())
    except OSError:
        pass  # the launcher is gone: nobody waits for the notice


def _furl_line(line: str) -> tuple[str, str | None, bytes | None]:
    """The line ``FURL [SECRET [MEMBER]]`` read on standard input: the FURL, the
    enrollment secret and the member key (None for those not given, or ``-``)."""
    words = line.split()
    if not words or not words[0].startswith("pb://"):
        sys.exit("error: no FURL on standard input")
    secret = words[1] if len(words) > 1 and words[1] != "-" else None
    member = words[2].encode() if len(words) > 2 and words[2] != "-" else None
    return words[0], secret, member


def _exit(code: int) -> None:
    """End the engine at once (no atexit: user code may hang there), its SSH
    tunnels first, if any."""
    from plait.kernel.engine.process import hard_exit

    if "plait.wire.tunnel" in sys.modules:
        sys.modules["plait.wire.tunnel"].close_all()
    hard_exit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dirs = dirs_for(args.profile)
    secret: str | None = None
    member: bytes | None = None
    try:
        if args.furl_file == "-":
            furl, secret, member = _furl_line(sys.stdin.readline())
        else:
            furl = read_furl(args.furl_file or dirs.furl_path(ENGINE_FURL))
        if args.enroll_file:
            slot = None
            if args.enroll_slot == "rank":
                slot = slot_of(os.environ)
                if slot is None:
                    sys.exit("error: --enroll-slot=rank, but this engine runs in no MPI or "
                             "batch job that says its rank")
            secret = take_secret(args.enroll_file, slot)
    except (OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    start_logging(dirs, "ipengine", to_stderr=True)
    if args.ssh:
        from plait.wire.errors import PlaitConnectionError
        from plait.wire.tunnel import tunnel_to, use_tunnel

        try:
            use_tunnel(furl, tunnel_to(args.ssh, args.sshkey, command=args.ssh_command,
                                       args=tuple(shlex.split(args.ssh_args))))
        except PlaitConnectionError as exc:
            sys.exit(f"error: {exc}")

    from plait.kernel.engine.process import Engine, install_interrupts

    def registered(engine_id: int) -> None:
        notify(args.notify_fd, f"engine {engine_id}")
        args.notify_fd = None  # closed now: a later registration (a reconnect) must not write
        _announce(args.notify_socket, engine_id)

    props = mpi_properties()
    engine = Engine(furl, properties=props, on_registered=registered,
                    channel=not args.no_channel, reconnect=max(0.0, args.reconnect),
                    engine_id=args.engine_id, secret=secret, member=member,
                    memory_limit=None if not args.memory_limit else int(args.memory_limit * 2**20))
    if props:  # under MPI: the rank is a name in the namespace too (%px print(rank))
        engine.interpreter.push({"rank": props["rank"], "size": props.get("size")})
    signal.signal(signal.SIGTERM, lambda *a: _exit(0))
    # SIGINT interrupts user code, and is ignored between commands (a Ctrl-C in the
    # terminal of an engine started by hand still stops it)
    install_interrupts(stop_when_idle=sys.stdin is not None and sys.stdin.isatty())
    freeze_startup_objects()  # (a forked engine's were frozen by its fork server)
    code = engine.run()
    if engine.error:
        print(f"error: {engine.error}", file=sys.stderr, flush=True)
    _exit(code)
    return code  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
