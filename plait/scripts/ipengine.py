"""``ipengine``: start one plait engine and connect it to a controller.

By default the engine FURL is read from the profile's security folder;
``--furl-file=PATH`` names another file (``-`` reads the FURL from stdin).
"""

from __future__ import annotations

import argparse
import signal
import sys

from plait.scripts._common import (
    add_notify_option,
    add_profile_option,
    dirs_for,
    notify,
    start_logging,
)
from plait.security import ENGINE_FURL, read_furl


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipengine", description="Start a plait engine.")
    add_profile_option(p)
    p.add_argument("--furl-file", default=None,
                   help="the engine FURL file (default: the profile's ipcontroller-engine.furl)")
    p.add_argument("--no-channel", action="store_true",
                   help="take commands through foolscap only, not the faster command channel "
                        "(for networks that let only the engine port through)")
    add_notify_option(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dirs = dirs_for(args.profile)
    try:
        if args.furl_file == "-":
            furl = sys.stdin.readline().strip()
            if not furl.startswith("pb://"):
                sys.exit("error: no FURL on standard input")
        else:
            furl = read_furl(args.furl_file or dirs.furl_path(ENGINE_FURL))
    except (OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    start_logging(dirs, "ipengine", to_stderr=True)

    from plait.kernel.engine.process import Engine, hard_exit

    def registered(engine_id: int) -> None:
        notify(args.notify_fd, f"engine {engine_id}")

    engine = Engine(furl, on_registered=registered, channel=not args.no_channel)
    signal.signal(signal.SIGTERM, lambda *a: hard_exit(0))
    code = engine.run()
    if engine.error:
        print(f"error: {engine.error}", file=sys.stderr, flush=True)
    hard_exit(code)
    return code  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
