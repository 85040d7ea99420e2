"""The bulk data channel (plait.wire.bulk) over real loopback sockets.

Every server listens on an ephemeral port of 127.0.0.1.  Synchronisation is
by events (a BlobServer subclass reports when a download arrives and when a
blob is freed) and by thread joins with generous timeouts, never by sleeping.
Most tests shrink the chunk size and the inline limit so that many-chunk
transfers stay tiny and fast.
"""

from __future__ import annotations

import logging
import queue
import secrets
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from plait.kernel.controller.blobserver import BlobServer
from plait.wire import bulk as _bulk
from plait.wire.bulk import Outgoing, fetch, make_descriptor, outgoing, parse_descriptor
from plait.wire.errors import BulkError, BulkIntegrityError, SerializationError
from plait.wire.serialize import (
    BULK,
    FRAMED,
    INLINE,
    deserialize,
    is_bulk,
    pack_framed,
    serialize,
    serialize_parts,
    unframe,
)

WAIT = 10.0  # seconds; only reached when something is broken
SMALL_CHUNK = 1024


class ObservedServer(BlobServer):
    """A BlobServer that reports arriving downloads and freed blobs."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.events = threading.Condition()
        self.downloads_seen = 0
        self.downloads_done = 0  # downloads whose end the server has fully handled
        self.kills: list[str] = []

    def _serve_download(self, sock, peer, blob_id):
        with self.events:
            self.downloads_seen += 1
            self.events.notify_all()
        try:
            super()._serve_download(sock, peer, blob_id)
        finally:
            with self.events:
                self.downloads_done += 1
                self.events.notify_all()

    def _write_kept(self, blob):
        super()._write_kept(blob)
        with self.events:
            self.events.notify_all()

    def _kill(self, blob, reason, reusable=False):
        super()._kill(blob, reason, reusable)
        with self.events:
            self.kills.append(reason)
            self.events.notify_all()

    def wait_for(self, predicate: Callable[[], bool]) -> None:
        with self.events:
            assert self.events.wait_for(predicate, WAIT), "server event did not happen"


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunks and inline limit: many-chunk transfers of small objects."""
    monkeypatch.setattr(_bulk, "CHUNK_SIZE", SMALL_CHUNK)
    monkeypatch.setattr(_bulk, "INLINE_LIMIT", 256)


@pytest.fixture
def server() -> Iterator[ObservedServer]:
    srv = ObservedServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


class Clock:
    """An injectable clock for expiry tests."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def prepare(server: BlobServer, obj: Any, readers: int = 1) -> tuple[Outgoing, bytes, bytes]:
    """``(outgoing, upload token, descriptor)`` for ``obj``."""
    out = outgoing(obj)
    assert isinstance(out, Outgoing)
    token, blob_id = server.create(out.size, readers)
    return out, token, out.descriptor(server.address, blob_id)


def round_trip(server: BlobServer, obj: Any) -> Any:
    out, token, desc = prepare(server, obj)
    out.send(server.address, token)
    return fetch(desc)


class Fetcher(threading.Thread):
    """``fetch`` in a thread; ``result()`` returns the value or raises its error."""

    def __init__(self, desc: bytes, **kwargs: Any):
        super().__init__(daemon=True)
        self.desc = desc
        self.kwargs = kwargs
        self.value: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = fetch(self.desc, **self.kwargs)
        except BaseException as exc:
            self.error = exc

    def result(self) -> Any:
        self.join(WAIT)
        assert not self.is_alive(), "fetch did not finish"
        if self.error is not None:
            raise self.error
        return self.value


def assert_serves(server: BlobServer) -> None:
    """The server still carries a normal transfer."""
    value = {"alive": np.arange(300_000, dtype=np.int32)}  # bulk even at the real limit
    result = round_trip(server, value)
    np.testing.assert_array_equal(result["alive"], value["alive"])


def sealed(out: Outgoing) -> bytes:
    """The ciphertext an upload of ``out`` would send."""

    class Capture:
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def sendall(self, data: Any) -> None:
            self.parts.append(bytes(data))

    capture = Capture()
    out._stream(capture)  # type: ignore[arg-type]
    return b"".join(capture.parts)


def request(address: tuple[str, int], op: bytes, secret: bytes) -> socket.socket:
    sock = socket.create_connection(address, timeout=WAIT)
    sock.sendall(_bulk.MAGIC + bytes([_bulk.PROTOCOL_VERSION]) + op + secret)
    return sock


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            break
        data += more
    return data


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# -- round trips ----------------------------------------------------------------------


ARRAYS = {
    "float64": np.linspace(0, 1, 3001),
    "float32": np.arange(2000, dtype=np.float32),
    "int8": np.arange(-100, 100, dtype=np.int8).repeat(9),
    "uint16-big-endian": np.arange(1500, dtype=">u2"),
    "complex128": np.arange(700) * (1 + 2j),
    "bool": np.arange(3000) % 3 == 0,
    "datetime64": np.arange(600).astype("datetime64[s]"),
    "structured": np.array([(i, i / 2) for i in range(400)], dtype=[("x", "<i4"), ("y", "<f8")]),
    "2d-fortran": np.asfortranarray(np.arange(3000.0).reshape(60, 50)),
    "strided": np.arange(9000.0)[::3],
    "2d-slice": np.arange(6000.0).reshape(100, 60)[:, 10:30],
    "transposed-3d": np.arange(4800, dtype=np.int16).reshape(8, 20, 30).transpose(2, 0, 1),
    "zero-size": np.empty((0, 7)),
    "scalar-0d": np.array(3.25),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_numpy_round_trip_over_many_chunks(server, small, name):
    array = ARRAYS[name]
    value = {"array": array, "tag": name * 100}  # the tag makes even tiny arrays bulk
    result = round_trip(server, value)
    got = result["array"]
    assert result["tag"] == name * 100
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)
    assert got.flags.writeable
    got[...] = 0  # really writable memory


def _owner(array: np.ndarray) -> Any:
    """The object that owns an array's memory (through views and memoryviews)."""
    base: Any = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_arrays_are_views_of_one_aligned_buffer(server, small):
    value = {"a": np.arange(1000.0), "b": np.arange(777, dtype=np.int8), "c": np.ones(3000)}
    result = round_trip(server, value)
    for key in value:
        np.testing.assert_array_equal(result[key], value[key])
        assert result[key].ctypes.data % 16 == 0
    owners = {id(_owner(result[key])) for key in value}
    assert len(owners) == 1, "arrays were copied out of the download buffer"


def test_default_chunk_size_large_array(server):
    array = np.random.default_rng(5).random(450_000)  # 3.6 MB: 4 chunks of 1 MiB
    assert array.nbytes > _bulk.INLINE_LIMIT
    out, token, desc = prepare(server, array)
    assert _bulk.chunk_count(out.size) == 4
    out.send(server.address, token)
    np.testing.assert_array_equal(fetch(desc), array)


@pytest.mark.parametrize(
    "value",
    [
        {"text": "x" * 5000, "numbers": list(range(2000)), "nested": {"t": (1, 2.5, None)}},
        b"\x00\xff" * 3000,
        "unicode \u2603 " * 500,
    ],
    ids=["dict", "bytes", "str"],
)
def test_plain_objects_round_trip(server, small, value):
    assert round_trip(server, value) == value


def test_zero_size_payload_is_one_empty_chunk(server, monkeypatch):
    out = Outgoing([], 0)
    assert out.ciphertext_size == _bulk.TAG_SIZE
    # An empty frame does not unpickle, but its transfer is sound.
    token, blob_id = server.create(0, 1)
    desc = out.descriptor(server.address, blob_id)
    out.send(server.address, token)
    assert len(_bulk._download(parse_descriptor(desc), 5.0)) == 0


def test_small_objects_travel_inline():
    small_array = np.arange(100.0)
    payload = outgoing({"a": small_array})
    assert isinstance(payload, bytes) and payload[:1] == FRAMED
    assert len(payload) <= _bulk.INLINE_LIMIT
    result = deserialize(payload)
    np.testing.assert_array_equal(result["a"], small_array)
    assert result["a"].flags.writeable
    plain = outgoing([1, "two", 3.0])
    assert plain[:1] == INLINE and deserialize(plain) == [1, "two", 3.0]
    assert not is_bulk(payload) and not is_bulk(plain)


def test_large_objects_are_not_inline_and_not_copied():
    array = np.ones(300_000)
    out = outgoing(array)
    assert isinstance(out, Outgoing)
    assert out.size > array.nbytes
    assert any(np.shares_memory(np.frombuffer(seg, np.uint8), array) for seg in out._segments)


def test_serialize_api_unchanged():
    value = {"a": np.arange(10), "b": "text"}
    data = serialize(value)
    assert data[:1] == INLINE and not is_bulk(data)
    result = deserialize(data)
    np.testing.assert_array_equal(result["a"], value["a"])
    assert is_bulk(b"B...")
    with pytest.raises(SerializationError, match="fetched"):
        deserialize(b"B...")
    with pytest.raises(SerializationError, match="unknown payload kind"):
        deserialize(b"Zzz")


def test_frames_reject_garbage():
    head, buffers = serialize_parts([np.arange(50), np.arange(3.0)])
    payload = pack_framed(head, buffers)
    assert payload[:1] == FRAMED
    for broken in (payload[:5], payload[:-1], payload + b"x", FRAMED + b"\xff" * 40):
        with pytest.raises(SerializationError):
            deserialize(broken)
    with pytest.raises(SerializationError):
        unframe(bytearray(20))


def test_descriptor_round_trip_and_garbage():
    blob_id, key = secrets.token_bytes(32), secrets.token_bytes(16)
    for host in ("127.0.0.1", "::1", "data.example.org"):
        desc = make_descriptor((host, 4321), blob_id, key, 123456789)
        assert is_bulk(desc) and desc[:1] == BULK
        assert parse_descriptor(desc) == ((host, 4321), blob_id, key, 123456789)
    for garbage in (b"", b"B", b"P" + desc[1:], desc[:1] + b"\x09" + desc[2:]):
        with pytest.raises(BulkError):
            parse_descriptor(garbage)


# -- concurrency: pipelining, fan-out ------------------------------------------------------


def test_fan_out_to_several_readers_then_freed(server, small):
    array = np.arange(20_000, dtype=np.float32)
    out, token, desc = prepare(server, array, readers=3)
    fetchers = [Fetcher(desc) for _ in range(3)]
    out.send(server.address, token)
    for f in fetchers:
        np.testing.assert_array_equal(f.result(), array)
    server.wait_for(lambda: "read by every reader" in server.kills)
    assert server.stats()["blobs"] == 0
    with pytest.raises(BulkError, match="unknown, expired or discarded"):
        fetch(desc)


def test_extra_reader_is_refused(server, small):
    out, token, desc = prepare(server, np.arange(3000.0), readers=1)
    results: queue.Queue = queue.Queue()

    def attempt() -> None:
        try:
            results.put(fetch(desc))
        except BulkError as exc:
            results.put(exc)

    for _ in range(2):
        threading.Thread(target=attempt, daemon=True).start()
    first = results.get(timeout=WAIT)  # nothing was uploaded: only a refusal can come first
    assert isinstance(first, BulkError) and "every reader" in str(first)
    out.send(server.address, token)
    np.testing.assert_array_equal(results.get(timeout=WAIT), np.arange(3000.0))


def test_download_connecting_before_upload(server, small):
    array = np.arange(50_000, dtype=np.int64)
    out, token, desc = prepare(server, array)
    fetcher = Fetcher(desc)
    server.wait_for(lambda: server.downloads_seen == 1)
    out.send(server.address, token)
    np.testing.assert_array_equal(fetcher.result(), array)


def test_download_receives_data_while_upload_streams(server, small, monkeypatch):
    """Pipelining: a reader gets the first bytes before the upload has finished."""
    monkeypatch.setattr(_bulk, "_NOTIFY_STEP", 8192)
    out = outgoing(np.arange(40_000.0))
    assert isinstance(out, Outgoing)
    ciphertext = sealed(out)
    token, blob_id = server.create(out.size, 1)
    reader = request(server.address, _bulk.OP_DOWNLOAD, blob_id)
    writer = request(server.address, _bulk.OP_UPLOAD, token)
    try:
        assert recv_exact(reader, 9) == b"K" + struct.pack("<Q", len(ciphertext))
        assert recv_exact(writer, 1) == b"K"
        first = 8192 + 4096  # enough to make the server publish
        assert first < len(ciphertext)
        writer.sendall(ciphertext[:first])
        assert recv_exact(reader, 4096) == ciphertext[:4096]
        writer.sendall(ciphertext[first:])
        assert recv_exact(reader, len(ciphertext) - 4096) == ciphertext[4096:]
        assert recv_exact(writer, 1) == b"K"
        reader.sendall(b"K")
        server.wait_for(lambda: "read by every reader" in server.kills)
    finally:
        reader.close()
        writer.close()


# -- failures ------------------------------------------------------------------------------


def test_wrong_or_spent_upload_token(server, small):
    out, token, desc = prepare(server, np.arange(5000.0))
    with pytest.raises(BulkError, match="refused the upload: unknown or spent upload token"):
        out.send(server.address, secrets.token_bytes(32))
    out.send(server.address, token)
    np.testing.assert_array_equal(fetch(desc), np.arange(5000.0))
    with pytest.raises(BulkError, match="unknown or spent upload token"):
        outgoing(np.arange(5000.0)).send(server.address, token)
    with pytest.raises(BulkError, match="already uploaded"):
        out.send(server.address, token)
    with pytest.raises(BulkError, match="32 bytes"):
        outgoing(np.arange(5000.0)).send(server.address, b"short")
    assert_serves(server)


def test_unknown_blob_and_unreachable_server(server, small):
    desc = make_descriptor(server.address, secrets.token_bytes(32), secrets.token_bytes(16), 10)
    with pytest.raises(BulkError, match="refused the download"):
        fetch(desc)
    probe = socket.create_server(("127.0.0.1", 0))
    free_port = probe.getsockname()[1]
    probe.close()
    desc = make_descriptor(("127.0.0.1", free_port), secrets.token_bytes(32), bytes(16), 10)
    with pytest.raises(BulkError, match="cannot reach"):
        fetch(desc)
    assert_serves(server)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"z" * 40,
        b"PLBK\x07U" + bytes(32),  # unknown version
        b"PLBK\x01X" + bytes(32),  # unknown operation
        b"PLB",  # closes mid-header
        b"",
    ],
    ids=["http", "version", "op", "short", "empty"],
)
def test_garbage_on_the_data_port(server, small, caplog, garbage):
    caplog.set_level(logging.WARNING, logger="plait.kernel.controller.blobserver")
    sock = socket.create_connection(server.address, timeout=WAIT)
    sock.sendall(garbage)
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:  # the server may already have read enough and hung up
        pass
    else:
        assert closed_by_peer(sock)
    sock.close()
    assert any("bulk:" in r.getMessage() for r in caplog.records)
    assert_serves(server)


def test_truncated_upload_fails_waiting_download_promptly(server, small):
    out, token, desc = prepare(server, np.arange(30_000.0))
    ciphertext = sealed(out)
    fetcher = Fetcher(desc)
    server.wait_for(lambda: server.downloads_seen == 1)
    writer = request(server.address, _bulk.OP_UPLOAD, token)
    assert recv_exact(writer, 1) == b"K"
    writer.sendall(ciphertext[: len(ciphertext) // 2])
    writer.close()
    # (the server may end the download before, while or after telling it the length)
    with pytest.raises(BulkError, match="closed the download|refused the download|"
                                        "closed the connection during the download"):
        fetcher.result()
    server.wait_for(lambda: any("truncated" in k for k in server.kills))
    assert server.stats()["blobs"] == 0
    assert_serves(server)


def test_stalled_upload_times_out():
    srv = ObservedServer(io_timeout=0.3)
    srv.start()
    try:
        out = outgoing(np.arange(300_000.0))
        token, blob_id = srv.create(out.size, 1)
        fetcher = Fetcher(out.descriptor(srv.address, blob_id))
        writer = request(srv.address, _bulk.OP_UPLOAD, token)
        assert recv_exact(writer, 1) == b"K"  # then nothing: the server gives up
        with pytest.raises(BulkError):
            fetcher.result()
        srv.wait_for(lambda: any("timed out" in k for k in srv.kills))
        writer.close()
        assert_serves(srv)
    finally:
        srv.stop()


def test_download_timeout_when_nothing_is_uploaded(server, small):
    out, token, desc = prepare(server, np.arange(3000.0))
    with pytest.raises(BulkError, match="timed out"):
        fetch(desc, timeout=0.2)


class Relay:
    """A man in the middle between downloads and the server.

    It forwards everything, but passes the ciphertext of a download through
    ``mutate`` (which may shorten it; the relay then closes the connection).
    """

    def __init__(self, target: tuple[str, int], mutate: Callable[[bytearray], bytes]):
        self.target = target
        self.mutate = mutate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = ("127.0.0.1", self.listener.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self.target, timeout=WAIT)
        client.settimeout(WAIT)

        def forward() -> None:  # client -> server, untouched
            try:
                while data := client.recv(65536):
                    upstream.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    upstream.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        threading.Thread(target=forward, daemon=True).start()
        try:
            prefix = recv_exact(upstream, 9)
            (length,) = struct.unpack("<Q", prefix[1:])
            data = recv_exact(upstream, length)
            changed = self.mutate(bytearray(data))
            client.sendall(prefix + changed)
            if len(changed) == len(data):
                while more := upstream.recv(65536):
                    client.sendall(more)
        finally:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # also wakes the forwarding thread
                except OSError:
                    pass
                sock.close()
            self.listener.close()


def _flip_middle(data: bytearray) -> bytes:
    data[len(data) // 2] ^= 0x01
    return bytes(data)


def _flip_last_tag(data: bytearray) -> bytes:
    data[-1] ^= 0x80
    return bytes(data)


def _swap_first_chunks(data: bytearray) -> bytes:
    n = SMALL_CHUNK + _bulk.TAG_SIZE
    return bytes(data[n : 2 * n] + data[:n] + data[2 * n :])


def _drop_last_chunk(data: bytearray) -> bytes:
    n = SMALL_CHUNK + _bulk.TAG_SIZE
    return bytes(data[: (len(data) // n) * n if len(data) % n else len(data) - n])


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (_flip_middle, BulkIntegrityError, "failed authentication"),
        (_flip_last_tag, BulkIntegrityError, "failed authentication"),
        (_swap_first_chunks, BulkIntegrityError, "at chunk 0"),
        (_drop_last_chunk, BulkError, "closed the download"),
    ],
    ids=["flip-byte", "flip-tag", "reorder", "truncate"],
)
def test_tampering_in_transit_is_detected(server, small, mutate, error, match):
    array = np.arange(10_000, dtype=np.int32)
    out, token, desc = prepare(server, array)
    out.send(server.address, token)
    relay = Relay(server.address, mutate)
    real = parse_descriptor(desc)
    via_relay = make_descriptor(relay.address, real.blob_id, real.key, real.size)
    with pytest.raises(error, match=match):
        fetch(via_relay)
    relay.thread.join(WAIT)
    # once the server has seen that attempt fail (no acknowledgment), the genuine
    # reader can still download it directly, and the server works on
    server.wait_for(lambda: server.downloads_done >= 1)
    np.testing.assert_array_equal(fetch(desc), array)
    assert_serves(server)


# -- lifetime ------------------------------------------------------------------------------


def test_blob_freed_after_its_readers(server, small):
    out, token, desc = prepare(server, np.arange(20_000.0), readers=2)
    assert server.stats()["blobs"] == 1
    out.send(server.address, token)
    assert server.stats()["bytes"] >= out.ciphertext_size
    fetch(desc)
    assert server.stats()["blobs"] == 1  # one reader to go
    fetch(desc)
    server.wait_for(lambda: "read by every reader" in server.kills)
    assert server.stats()["blobs"] == 0 and server.stats()["bytes"] == 0


def test_expiry_with_an_injected_clock(small):
    clock = Clock()
    srv = ObservedServer(expire_after=30.0, clock=clock)
    srv.start()
    try:
        srv.create(5000, 1)  # never used at all
        out, token, desc = prepare(srv, np.arange(3000.0))
        waiting = Fetcher(desc)  # waits for an upload that never comes
        srv.wait_for(lambda: srv.downloads_seen == 1)
        clock.now += 29.0
        srv.expire()
        assert srv.stats()["blobs"] == 2
        clock.now += 2.0
        srv.expire()
        assert srv.stats()["blobs"] == 0
        with pytest.raises(BulkError):
            waiting.result()
        with pytest.raises(BulkError, match="unknown or spent"):
            out.send(srv.address, token)
        # An uploaded but unread blob expires too; a younger one does not.
        out, token, desc = prepare(srv, np.arange(3000.0))
        out.send(srv.address, token)
        clock.now += 31.0
        young, young_token, young_desc = prepare(srv, np.arange(3000.0) + 1)
        srv.expire()
        assert srv.stats()["blobs"] == 1
        with pytest.raises(BulkError, match="unknown, expired or discarded"):
            fetch(desc)
        young.send(srv.address, young_token)
        np.testing.assert_array_equal(fetch(young_desc), np.arange(3000.0) + 1)
    finally:
        srv.stop()


def test_discard_aborts_a_waiting_download(server, small):
    out, token, desc = prepare(server, np.arange(3000.0))
    fetcher = Fetcher(desc)
    server.wait_for(lambda: server.downloads_seen == 1)
    server.discard(parse_descriptor(desc).blob_id)
    with pytest.raises(BulkError):
        fetcher.result()
    server.discard(secrets.token_bytes(32))  # unknown: ignored
    assert server.stats()["blobs"] == 0
    assert_serves(server)


def test_stop_aborts_transfers_and_frees_everything(small):
    srv = ObservedServer()
    srv.start()
    out, token, desc = prepare(srv, np.arange(3000.0))
    fetcher = Fetcher(desc)
    srv.wait_for(lambda: srv.downloads_seen == 1)
    srv.stop()
    with pytest.raises(BulkError):
        fetcher.result()
    assert srv.stats()["blobs"] == 0
    with pytest.raises(BulkError):
        out.send(srv.address, token)
    with pytest.raises(BulkError, match="stopped"):
        srv.create(10, 1)


def test_server_api_guards():
    srv = BlobServer(advertised_host="data.example.org")
    with pytest.raises(RuntimeError):
        srv.address  # noqa: B018 - not started
    srv.start()
    try:
        assert srv.address[0] == "data.example.org" and srv.address[1] > 0
        with pytest.raises(ValueError):
            srv.create(-1, 1)
        with pytest.raises(ValueError):
            srv.create(10, 0)
        with pytest.raises(RuntimeError):
            srv.start()
    finally:
        srv.stop()


# -- kept blobs (the hub's large results) ---------------------------------------------------
@pytest.fixture
def keeping(tmp_path) -> Iterator[ObservedServer]:
    srv = ObservedServer(keep_dir=str(tmp_path / "keep"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_a_kept_blob_goes_to_disk_and_serves_any_number_of_readers(keeping, tmp_path):
    value = np.arange(300_000, dtype=np.int64)
    out, token, desc = prepare(keeping, value)
    assert keeping.keep(desc)
    out.send(keeping.address, token)
    for _ in range(3):  # readers=1 was asked, yet every one is served
        np.testing.assert_array_equal(fetch(desc), value)
    keeping.stop()  # waits for the write
    files = list((tmp_path / "keep").iterdir())
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600


def test_a_kept_blob_leaves_memory_once_written(keeping):
    value = np.arange(300_000, dtype=np.int64)
    out, token, desc = prepare(keeping, value)
    keeping.keep(desc)
    out.send(keeping.address, token)
    np.testing.assert_array_equal(fetch(desc), value)
    keeping.wait_for(lambda: keeping.stats()["bytes"] == 0)  # (notified once written)


def test_keeping_a_blob_not_uploaded_yet_waits_for_no_write(keeping):
    """A queued task's argument the client has not begun to upload: there is no
    write to wait for, so the submission's acknowledgment is not held."""
    out, token, desc = prepare(keeping, np.arange(300_000, dtype=np.int64))
    called = threading.Event()
    assert keeping.keep(desc, written=called.set)
    assert called.is_set()  # (at once)
    out.send(keeping.address, token)  # still kept once it comes
    np.testing.assert_array_equal(fetch(desc), np.arange(300_000, dtype=np.int64))


def test_keeping_a_blob_whose_upload_dies_releases_its_waiter(keeping):
    """The uploader dies mid-way: the write never comes, and whoever waited for it
    (an acknowledgment) is released, not held for ever."""
    out, token, desc = prepare(keeping, np.arange(300_000, dtype=np.int64))
    ciphertext = sealed(out)
    writer = request(keeping.address, _bulk.OP_UPLOAD, token)
    assert recv_exact(writer, 1) == b"K"
    writer.sendall(ciphertext[: len(ciphertext) // 2])
    keeping.wait_for(lambda: keeping.stats()["bytes"] > 0)  # (uploading now)
    called = threading.Event()
    keeping.keep(desc, written=called.set)
    assert not called.is_set()  # (its write is to come)
    writer.close()
    assert called.wait(30), "the waiter of a blob whose upload died was never released"


def test_a_kept_blob_is_served_by_the_next_server_on_its_folder(tmp_path):
    first = BlobServer(keep_dir=str(tmp_path / "keep"))
    first.start()
    value = np.arange(200_000, dtype=np.int64)
    out, token, desc = prepare(first, value)
    first.keep(desc)
    out.send(first.address, token)
    first.stop()
    second = BlobServer(keep_dir=str(tmp_path / "keep"))
    second.start()
    try:
        moved = second.readdress(desc)
        assert parse_descriptor(moved).address == second.address
        np.testing.assert_array_equal(fetch(moved), value)
        second.drop_payload(moved)
        assert list((tmp_path / "keep").iterdir()) == []
        with pytest.raises(BulkError, match="unknown"):
            fetch(moved)
    finally:
        second.stop()


def test_drop_all_kept(keeping, tmp_path):
    descs = []
    for n in (150_000, 160_000):
        out, token, desc = prepare(keeping, np.zeros(n))
        keeping.keep(desc)
        out.send(keeping.address, token)
        descs.append(desc)
    fetch(descs[0])
    keeping.drop_all_kept()
    keeping.stop()
    assert list((tmp_path / "keep").iterdir()) == []


def test_keep_refuses_what_it_cannot_keep(server, keeping):
    out, token, desc = prepare(server, np.zeros(200_000))
    assert not server.keep(desc)  # no keep folder
    assert not keeping.keep(b"P" + b"inline")
    assert not keeping.keep(desc)  # not one of its blobs
    out.send(server.address, token)
    fetch(desc)
