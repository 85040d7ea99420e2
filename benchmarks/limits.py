"""The machine's own limits, measured in the same run as the figures they bound.

* ``tcp_rtt``: round trip of 1 byte between two Python processes over a
  loopback TCP socket (TCP_NODELAY, blocking ``send``/``recv``); median.
* ``tcp_rtt_relay``: the same through a relay process (client -> relay ->
  echo and back), the shape of a client -> controller -> engine call.
* ``tls_bw``: MB/s (10^6 bytes/s) of one process sending to another over one
  TLS connection on loopback with Python's ``ssl`` module (median of the
  transfers of ``size`` bytes into a ready buffer).
* ``py_start``: seconds to run ``python -c pass`` (the floor of starting any
  process that runs Python); median.
* ``py_stop``: ``py_start`` plus the seconds to SIGTERM three idle Python
  processes and reap them: the floor of a command that stops a controller and
  two engines; median.
* ``local_map``: seconds to run ``list(map(lambda x: x**10, range(N)))`` in
  this process, serially; median.

Run as a child by ``run.py``: ``python limits.py all --params JSON --out FILE``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import MB, Results, child_main, median  # noqa: E402

# -- TCP ping-pong ---------------------------------------------------------------------------


def _nodelay(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _echo(port: int) -> None:
    with _nodelay(socket.create_connection(("127.0.0.1", port))) as sock:
        while data := sock.recv(64):
            sock.sendall(data)


def _relay(up_port: int, conn) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        conn.send(listener.getsockname()[1])
        down, _ = listener.accept()
    with _nodelay(down), _nodelay(socket.create_connection(("127.0.0.1", up_port))) as up:
        while data := up.recv(64):
            down.sendall(data)
            up.sendall(down.recv(64))


def _ping(sock: socket.socket, count: int) -> float:
    """Median seconds of ``count`` 1-byte round trips (after a warm-up)."""
    times = []
    for i in range(count + 50):
        t0 = time.perf_counter()
        sock.sendall(b"x")
        if not sock.recv(64):
            raise RuntimeError("the echo process went away")
        if i >= 50:
            times.append(time.perf_counter() - t0)
    return median(times)


def tcp_rtt(count: int, relay: bool = False) -> float:
    """Median loopback round trip in seconds, direct or through a relay process."""
    ctx = mp.get_context("spawn")
    procs = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        try:
            if relay:
                mine, theirs = ctx.Pipe()
                procs.append(ctx.Process(target=_relay, args=(port, theirs), daemon=True))
                procs[-1].start()
                echo_port = mine.recv()
            else:
                echo_port = port
            procs.append(ctx.Process(target=_echo, args=(echo_port,), daemon=True))
            procs[-1].start()
            listener.settimeout(30)
            sock, _ = listener.accept()
            with _nodelay(sock):
                return _ping(sock, count)
        finally:
            for p in procs:
                p.join(5)
                if p.is_alive():
                    p.kill()


# -- TLS bandwidth ---------------------------------------------------------------------------


def _self_signed(directory: str) -> tuple[str, str]:
    """A certificate and key file (one PEM holding both), made as plait makes its own."""
    from plait.security._tub import new_certificate_pem

    path = os.path.join(directory, "cert.pem")
    Path(path).write_bytes(new_certificate_pem("plait-bench"))
    return path, path


def _tls_sender(port: int, nbytes: int) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    data = memoryview(os.urandom(1 << 20) * (nbytes >> 20) + os.urandom(nbytes % (1 << 20)))
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw) as sock:
        while sock.recv(1) == b"g":
            sock.sendall(data)


def tls_bandwidth(nbytes: int, repeat: int) -> tuple[float, str]:
    """Median MB/s of one-hop TLS transfers of ``nbytes``, and the cipher used."""
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = _self_signed(tmp)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            try:
                proc = mp.get_context("spawn").Process(
                    target=_tls_sender, args=(listener.getsockname()[1], nbytes), daemon=True)
                proc.start()
                listener.settimeout(30)
                raw, _ = listener.accept()
                with ctx.wrap_socket(raw, server_side=True) as sock:
                    view = memoryview(bytearray(nbytes))
                    times = []
                    for i in range(repeat + 1):  # the first one warms up
                        t0 = time.perf_counter()
                        sock.sendall(b"g")
                        got = 0
                        while got < nbytes:
                            n = sock.recv_into(view[got:], min(nbytes - got, 1 << 20))
                            if not n:
                                raise RuntimeError("the TLS sender went away")
                            got += n
                        if i:
                            times.append(time.perf_counter() - t0)
                    cipher = sock.cipher()
                    sock.sendall(b"q")
            finally:
                if proc is not None:
                    proc.join(10)
                    if proc.is_alive():
                        proc.kill()
    return nbytes / median(times) / MB, f"{cipher[1]} {cipher[0]}" if cipher else ""


# -- process start, local compute ------------------------------------------------------------


def python_start(repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return median(times)


def python_stop(repeat: int) -> float:
    """Median seconds to terminate and reap three idle interpreters (``py_start`` not included)."""
    times = []
    for _ in range(repeat):
        procs = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                  stdin=subprocess.PIPE) for _ in range(3)]
        try:
            time.sleep(0.3)  # let them start
            t0 = time.perf_counter()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()
            times.append(time.perf_counter() - t0)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stdin.close()
    return median(times)


def local_map(n: int, repeat: int) -> float:
    f = lambda x: x**10  # noqa: E731 - the same lambda the map figures use
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        list(map(f, range(n)))
        times.append(time.perf_counter() - t0)
    return median(times)


def run(params: dict, results: Results) -> None:
    count = params.get("rtt_count", 300)
    repeat = params.get("repeat", 5)
    size = int(params.get("tls_mb", 100) * MB)
    results.measure("tcp_rtt", lambda: results.add(
        "tcp_rtt", tcp_rtt(max(count, 200)) * 1e3))
    results.measure("tcp_rtt_relay", lambda: results.add(
        "tcp_rtt_relay", tcp_rtt(max(count, 200), relay=True) * 1e3))

    def tls() -> None:
        rate, cipher = tls_bandwidth(size, max(repeat, 2))
        results.add("tls_bw", rate, detail=f"{size / MB:g} MB transfers, {cipher}")

    results.measure("tls_bw", tls)
    start = results.measure("py_start", lambda: python_start(max(repeat, 3)))
    if start is not None:
        results.add("py_start", start)
        results.measure("py_stop", lambda: results.add(
            "py_stop", start + python_stop(max(repeat, 3))))
    n = params.get("map_n", 10_000)
    results.measure("local_map", lambda: results.add(
        "local_map", local_map(n, max(repeat, 3)), detail=f"n={n}"))


if __name__ == "__main__":
    child_main(run)
