"""Micro-benchmark of the bulk data channel (plait.wire.bulk).

Runs a :class:`BlobServer` in its own process (like the controller) and two
peer processes (like a client and an engine).  A *push* is one peer uploading
while the other downloads the same blob through the server, pipelined as in a
real push; a *pull* is the same in the other direction, moving the array that
the push delivered.  The time of a transfer runs from the start of the upload
to the end of ``fetch`` (download, authentication, decryption and unpickling).

For reference it also measures a plain Python ``ssl`` TLS connection, one hop
on loopback, in the same run.

Usage::

    python benchmarks/bulk_micro.py [--sizes 10,100] [--repeat 10] [--set NAME=VALUE] [--verbose]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from plait.kernel.controller import blobserver as _blobserver
from plait.wire import bulk as _bulk  # noqa: E402

MB = 1_000_000


# -- the server process ----------------------------------------------------------------


def _apply(overrides: dict[str, int]) -> None:
    """Set tuning constants of _bulk (``--set NAME=VALUE``) in this process."""
    for name, value in overrides.items():
        setattr(_bulk, name, value)


def _server_main(conn, overrides) -> None:
    _apply(overrides)
    server = _blobserver.BlobServer()
    server.start()
    conn.send(server.address)
    while True:
        msg = conn.recv()
        if msg[0] == "create":
            conn.send(server.create(msg[1], msg[2]))
        elif msg[0] == "stats":
            conn.send(server.stats())
        else:
            server.stop()
            conn.send(None)
            return


# -- the peer processes ------------------------------------------------------------------


def _peer_main(conn, overrides) -> None:
    _apply(overrides)
    value = None
    pending: _bulk.Outgoing | None = None
    while True:
        msg = conn.recv()
        op = msg[0]
        if op == "make":
            value = np.random.default_rng(0).random(msg[1] // 8)
            conn.send(value.nbytes)
        elif op == "prepare":
            t0 = time.perf_counter()
            out = _bulk.outgoing(value)
            elapsed = time.perf_counter() - t0
            assert isinstance(out, _bulk.Outgoing)
            pending = out
            conn.send((out.size, elapsed))
        elif op == "descriptor":
            conn.send(pending.descriptor(msg[1], msg[2]))
        elif op == "send":
            t0 = time.perf_counter()
            pending.send(msg[1], msg[2])
            pending = None
            conn.send(time.perf_counter() - t0)
        elif op == "fetch":
            result = _bulk.fetch(msg[1])
            t_end = time.perf_counter()
            value = result
            conn.send(t_end)
        elif op == "checksum":
            conn.send(float(np.sum(value)))
        else:
            conn.send(None)
            return


class Proc:
    """A child process driven through a pipe."""

    def __init__(self, target, overrides: dict[str, int]):
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=target, args=(child, overrides), daemon=True)
        self.proc.start()

    def call(self, *msg):
        self.conn.send(msg)
        return self.conn.recv()

    def post(self, *msg):
        self.conn.send(msg)

    def result(self):
        return self.conn.recv()

    def close(self):
        self.call("quit")
        self.proc.join(10)


def transfer(server: Proc, address, sender: Proc, receiver: Proc) -> float:
    """One pipelined upload -> relay -> download; returns seconds."""
    size, _ = sender.call("prepare")
    token, blob_id = server.call("create", size, 1)
    desc = sender.call("descriptor", address, blob_id)
    # The download connects first (like an engine that gets the descriptor while
    # the client is still uploading), then the upload starts.
    receiver.post("fetch", desc)
    t0 = time.perf_counter()
    sender.post("send", address, token)
    sender.result()
    t_end = receiver.result()
    return t_end - t0


# -- TLS reference -----------------------------------------------------------------------


def tls_one_hop(nbytes: int, repeat: int) -> float:
    """Python TLS bandwidth on loopback, one hop (MB/s), as benchmarks/limits.py measures it."""
    from limits import tls_bandwidth

    return tls_bandwidth(nbytes, repeat)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100", help="array sizes in MB, comma separated")
    parser.add_argument("--repeat", type=int, default=10, help="transfers per size and direction")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override an integer tuning constant of _bulk (e.g. CHUNK_SIZE=262144)",
    )
    parser.add_argument("--verbose", action="store_true", help="print every transfer's rate")
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if not hasattr(_bulk, name):
            parser.error(f"_bulk has no constant {name}")
        overrides[name] = int(value, 0)
    _apply(overrides)
    sizes = [int(float(s) * MB) for s in args.sizes.split(",")]

    mp.set_start_method("spawn", force=True)
    print(
        f"chunk size {_bulk.CHUNK_SIZE >> 10} KiB, {os.cpu_count()} cores, overrides {overrides}"
    )
    server = Proc(_server_main, overrides)
    address = server.result()
    client = Proc(_peer_main, overrides)
    engine = Proc(_peer_main, overrides)
    try:
        for nbytes in sizes:
            tls = tls_one_hop(nbytes, args.repeat)
            client.call("make", nbytes)
            expected = client.call("checksum")
            pushes, pulls = [], []
            for _ in range(args.repeat):
                pushes.append(transfer(server, address, client, engine))
                pulls.append(transfer(server, address, engine, client))
            assert engine.call("checksum") == expected
            assert client.call("checksum") == expected
            _, prep = client.call("prepare")
            label = f"{nbytes / MB:.0f} MB"
            for name, times in (("push", pushes), ("pull", pulls)):
                best = nbytes / min(times) / MB
                median = nbytes / statistics.median(times) / MB
                print(
                    f"{label:>7} {name}: best {best:6.0f} MB/s, median {median:6.0f} MB/s "
                    f"(x{best / tls:.2f} / x{median / tls:.2f} of TLS one hop)"
                )
            if args.verbose:
                for name, times in (("push", pushes), ("pull", pulls)):
                    rates = " ".join(f"{nbytes / t / MB:.0f}" for t in times)
                    print(f"{label:>7} {name} MB/s each: {rates}")
            rounds = [a + b for a, b in zip(pushes, pulls, strict=True)]
            print(
                f"{label:>7} push+pull round trip: median {2 * nbytes / statistics.median(rounds) / MB:6.0f} MB/s; "
                f"TLS one hop {tls:6.0f} MB/s; outgoing() {prep * 1e6:.0f} us"
            )
        stats = server.call("stats")
        print(f"server after the run: {stats}")
    finally:
        for proc in (client, engine):
            proc.close()
        server.call("stop")
        server.proc.join(10)


if __name__ == "__main__":
    main()
