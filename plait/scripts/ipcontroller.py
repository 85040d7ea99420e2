"""``ipcontroller``: start a plait controller in the foreground.

It writes ``ipcontroller-engine.furl``, ``ipcontroller-mec.furl`` and
``ipcontroller-tc.furl`` to the profile's security folder; engines and
clients use them to connect.  Listens on 127.0.0.1 unless ``--ip`` says
otherwise.
"""

from __future__ import annotations

import argparse
import sys

from plait.scripts._common import (
    add_notify_option,
    add_profile_option,
    dirs_for,
    freeze_startup_objects,
    notify,
    start_logging,
)


def _seconds_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} seconds, not {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipcontroller", description="Start a plait controller.")
    add_profile_option(p)
    p.add_argument("--ip", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; '0.0.0.0' for all)")
    p.add_argument("--location", default=None,
                   help="host name or address written into FURLs (default: the --ip value)")
    p.add_argument("--client-port", type=int, default=0,
                   help="port for clients (default: a random free port)")
    p.add_argument("--engine-port", type=int, default=0,
                   help="port for engines (default: a random free port)")
    p.add_argument("--client-channel-port", type=int, default=0,
                   help="port of the clients' command channel (default: a random free port)")
    p.add_argument("--engine-channel-port", type=int, default=0,
                   help="port of the engines' command channel (default: a random free port)")
    p.add_argument("--data-port", type=int, default=0,
                   help="port for large data, pushes and results (default: a random free "
                        "port); fix all six ports (--status-port too) to open a firewall for exactly them")
    p.add_argument("--scheme", default=None,
                   help="task scheduler scheme: fifo, lru, plainrandom, twobin, leastload, weighted")
    p.add_argument("--hwm", type=int, default=None,
                   help="task high-water mark: tasks outstanding per engine (default: adaptive, "
                        "about 5 ms of queued work per engine; 0: no limit)")
    p.add_argument("--db", choices=("sqlite", "memory", "none"), default="sqlite",
                   help="where the hub keeps the records of tasks: an SQLite database in the "
                        "profile (default; they survive restarts), memory, or nowhere")
    p.add_argument("--restore", action="store_true",
                   help="go on from the last controller of the profile (one that died): "
                        "engine ids go on from its, so that its engines rejoin with theirs "
                        "(a cluster's keeper starts the controller so)")
    p.add_argument("--new-furls", action="store_true",
                   help="write FURLs with new secrets: FURL files handed out before stop working")
    p.add_argument("--adapter", action="append", default=[], metavar="MODULE:NAME",
                   help="publish an extra interface (a plait.adapters.Publication)")
    p.add_argument("--engine-timeout", type=_seconds_at_least(3), default=30,
                   help="seconds of silence after which an engine's host counts as gone "
                        "(default 30; engines answer keepalives even while running code)")
    p.add_argument("--status-port", type=int, default=0, metavar="PORT",
                   help="the port of the status page (default 0: a free one), behind a "
                        "token in its URL")
    p.add_argument("--status-ip", default="127.0.0.1",
                   help="the interface of the status page (default 127.0.0.1: it is plain "
                        "HTTP; reach it from elsewhere through an SSH tunnel)")
    p.add_argument("--no-status", action="store_true", help="serve no status page")
    p.add_argument("--enroll", action="store_true",
                   help="admit only engines that show a one-time enrollment secret (ipcluster "
                        "starts its controller so, and gives its engines secrets; issue them "
                        "for engines started by hand with 'ipcluster enroll'): the engine FURL "
                        "alone then makes nobody an engine")
    add_notify_option(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ip in ("0.0.0.0", "::") and args.location is None:
        sys.exit(f"error: with --ip {args.ip} give --location, the address engines and clients "
                 "should use to reach this host")
    dirs = dirs_for(args.profile)
    log_path = start_logging(dirs, "ipcontroller", to_stderr=True)
    from plait.security import raise_open_files_limit

    raise_open_files_limit()  # a connection per engine and client: as many as allowed

    from twisted.internet import reactor
    from twisted.logger import Logger

    from plait.adapters import default_publications, load_publication
    from plait.kernel.controller.service import ControllerService

    try:
        pubs = default_publications() + [load_publication(s) for s in args.adapter]
        controller = ControllerService(
            dirs, ip=args.ip, location=args.location, client_port=args.client_port,
            engine_port=args.engine_port, scheme=args.scheme, hwm=args.hwm, publications=pubs,
            client_channel_port=args.client_channel_port,
            engine_channel_port=args.engine_channel_port, data_port=args.data_port,
            engine_timeout=args.engine_timeout, new_furls=args.new_furls, db=args.db,
            restore=args.restore, status_port=None if args.no_status else args.status_port,
            status_ip=args.status_ip, enroll=args.enroll,
        )
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        sys.exit(f"error: {exc}")

    failed: list[str] = []

    def start() -> None:
        try:
            controller.startService()
        except Exception as exc:
            failed.append(str(exc))
            Logger().error("the controller could not start: {error}", error=exc)
            print(f"error: {exc}", file=sys.stderr, flush=True)
            reactor.stop()
            return
        admits = "enrolled engines only" if args.enroll else "any holder of the engine FURL"
        print(f"plait controller ready ({controller.describe_ports()}); FURL files in "
              f"{dirs.security}; log {log_path}; admits {admits}", flush=True)
        if controller.status_url:
            print(f"status page: {controller.status_url}", flush=True)
        notify(args.notify_fd, f"ready {controller.furls.get('ipcontroller-engine.furl')}")

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", controller.stopService)
    # (no collection first: some 30 ms before the engines may join; the garbage
    # the imports left in cycles, if any, is kept)
    freeze_startup_objects(collect=False)
    reactor.run()
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
