"""The controller's side of the bulk data channel: the blob relay.

:class:`BlobServer` listens on the controller's data port.  Senders upload
ciphertext (see :mod:`plait.wire.bulk` for the format and the peer side);
receivers download it while it arrives.  The relay never holds a key: it
stores and forwards bytes it can neither read nor forge, with blocking
sockets in its own threads, so the controller's reactor never waits on it.

A blob lives in memory until its readers have read it.  A *kept* blob
(:meth:`BlobServer.keep`: a large result the hub records) is written to a
file of the keep folder once uploaded, freed from memory, and served from
that file to any number of readers until it is discarded (a purge); the
file is named after the digest of the blob's id, so a controller started
again serves the blobs its hub's records name.  The file holds ciphertext:
what the relay never reads, at rest as on the wire.
"""

from __future__ import annotations

import hmac
import logging
import mmap
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from plait.wire import bulk as wire
from plait.wire.errors import BulkError
from plait.wire.serialize import is_bulk

log = logging.getLogger(__name__)

#: Connections allowed at once that have not yet presented a valid token.
MAX_UNPROVEN = 32


class _Blob:
    """One reserved blob; its fields are guarded by ``cond``."""

    def __init__(self, blob_id: bytes, token: bytes, size: int, readers: int, now: float):
        self.blob_id = blob_id
        self.token = token
        self.size = size
        self.ct_size = wire.ciphertext_size(size)
        self.readers = readers
        self.cond = threading.Condition()
        self.buffer: bytearray | mmap.mmap | None = None
        self.view: memoryview | None = None
        self.watermark = 0  # ciphertext bytes received so far
        self.uploading = False
        self.complete = False
        self.dead = False
        self.reason = ""
        self.claimed = 0  # downloads admitted (running or done)
        self.completed = 0  # downloads acknowledged by their reader
        self.downloads = 0  # downloads running now
        self.last_activity = now
        self.sockets: set[socket.socket] = set()
        self.keep: str | None = None  # the file a kept blob is (to be) served from
        self.on_disk = False  # written there, freed from memory
        self.writing = False  # being written there
        self.written: list[Callable[[], None]] = []  # called once it is (or never will be)

class BlobServer:
    """The controller's data port: holds uploaded ciphertext and relays it to readers.

    Thread-safe.  ``start`` listens on an ephemeral port; every public method
    but ``stop`` returns quickly and may be called from the reactor thread.
    ``clock`` (for tests) gives the time used for expiry.  Up to two buffers
    of fully read blobs (at most ``cache_bytes`` in all) are kept for ten
    seconds for reuse by the next uploads; ``cache_bytes=0`` disables that.
    """

    def __init__(
        self,
        interface: str = "127.0.0.1",
        advertised_host: str | None = None,
        expire_after: float = 600.0,
        *,
        io_timeout: float = wire.IO_TIMEOUT,
        max_connections: int = 256,
        clock: Callable[[], float] = time.monotonic,
        cache_bytes: int = 256 << 20,
        keep_dir: str | None = None,
        port: int = 0,
    ):
        self.interface = interface
        self.listen_port = port  # 0: a random free port
        self.keep_dir = keep_dir  # where kept blobs are written (None: none can be)
        self.advertised_host = advertised_host
        self.expire_after = expire_after
        self.io_timeout = io_timeout
        self.max_connections = max_connections
        self._clock = clock
        self.cache_bytes = cache_bytes
        # Idle buffers of fully read blobs, (buffer, idle since): refaulting a
        # fresh buffer costs ~10% of a transfer's time.
        self._cache: list[tuple[bytearray | mmap.mmap, float]] = []
        self._lock = threading.Lock()
        self._by_id: dict[bytes, _Blob] = {}
        self._by_token: dict[bytes, _Blob] = {}
        self._connections: set[socket.socket] = set()
        self._unproven: dict[socket.socket, None] = {}  # in arrival order
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._port = 0

    # -- lifecycle

    def start(self) -> None:
        """Listen on an ephemeral port and serve in daemon threads."""
        if self._listener is not None or self._stopping.is_set():
            raise RuntimeError("a BlobServer is started once (and not after stop)")
        infos = socket.getaddrinfo(
            self.interface, self.listen_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, sockaddr = infos[0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(sockaddr)
            listener.listen(128)
        except OSError as exc:
            listener.close()
            raise OSError(exc.errno, f"cannot listen on {self.interface}:{self.listen_port} "
                                     f"(the data port): {exc.strerror}") from None
        listener.settimeout(self._tick())
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="plait-bulk-accept", daemon=True
        )
        self._accept_thread.start()

    def stop(self) -> None:
        """Stop listening, abort every transfer and free every blob (joins threads)."""
        self._stopping.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            blobs = list(self._by_id.values())
            self._cache.clear()
        for blob in blobs:  # kept blobs not on disk yet are written first
            with blob.cond:
                unwritten = (blob.keep is not None and blob.complete and not blob.on_disk
                             and not blob.dead)
            if unwritten:
                self._write_kept(blob)
        for blob in blobs:
            self._kill(blob, "the bulk data server stopped")
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for sock in connections:
            _shutdown(sock)
        deadline = time.monotonic() + 5.0
        for thread in [self._accept_thread, *threads]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` that peers should connect to."""
        if not self._port:
            raise RuntimeError("BlobServer not started")
        return (self.advertised_host or self.interface, self._port)

    # -- blob management

    def create(self, size: int, readers: int) -> tuple[bytes, bytes]:
        """Reserve a blob of ``size`` plaintext bytes for ``readers`` downloads.

        Returns ``(upload_token, blob_id)``; the token admits one upload.
        """
        if size < 0 or readers < 1:
            raise ValueError("a blob needs size >= 0 and readers >= 1")
        if self._stopping.is_set():
            raise wire.BulkError("the bulk data server is stopped")
        token = secrets.token_bytes(wire.TOKEN_SIZE)
        blob_id = secrets.token_bytes(wire.TOKEN_SIZE)
        blob = _Blob(blob_id, token, size, readers, self._clock())
        with self._lock:
            self._by_id[wire._digest(blob_id)] = blob
            self._by_token[wire._digest(token)] = blob
        return token, blob_id

    def discard(self, blob_id: bytes) -> None:
        """Free a blob now (and its file, if kept); its transfers are aborted.
        Unknown ids are ignored."""
        with self._lock:
            blob = self._by_id.get(wire._digest(blob_id))
        if blob is not None and hmac.compare_digest(blob.blob_id, blob_id):
            self._kill(blob, "discarded")
        path = self._keep_path(blob_id)
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass

    def _keep_path(self, blob_id: bytes) -> str | None:
        if self.keep_dir is None:
            return None
        return os.path.join(self.keep_dir, wire._digest(blob_id).hex())

    def keep(self, payload: bytes, written: Callable[[], None] | None = None) -> bool:
        """Keep the blob a bulk payload names for as long as it is not discarded:
        on disk once uploaded, for any number of readers.  False (nothing done)
        for an inline payload, an unknown blob, or when there is no keep folder.
        ``written()``, if given, is called (from a blob thread, or at once) when
        the blob is in its file, or when it never will be (it died, the write
        failed, or nothing was done)."""
        blob = self._keepable(payload)
        if blob is None:
            if written is not None:
                written()
            return False
        path = self._keep_path(blob.blob_id)
        assert path is not None
        with blob.cond:
            if blob.dead or blob.on_disk:
                if written is not None:
                    written()
                return not blob.dead
            if written is not None:
                if blob.complete or blob.uploading:
                    blob.written.append(written)
                else:  # (nothing uploaded yet: no write to wait for, nobody waits)
                    written()
            blob.keep = path
            write_now = blob.complete
        if write_now:
            def write() -> None:
                try:
                    self._write_kept(blob)
                finally:
                    with self._lock:
                        self._threads.discard(threading.current_thread())

            thread = threading.Thread(target=write, name="plait-bulk-keep", daemon=True)
            with self._lock:
                self._threads.add(thread)  # stop() waits for the write
            thread.start()
        return True

    def _keepable(self, payload: bytes) -> _Blob | None:
        if not is_bulk(payload) or self.keep_dir is None:
            return None
        try:
            blob_id = wire.parse_descriptor(payload).blob_id
        except BulkError:
            return None
        with self._lock:
            blob = self._by_id.get(wire._digest(blob_id))
        if blob is None or not hmac.compare_digest(blob.blob_id, blob_id):
            return None
        return blob

    def readdress(self, payload: bytes) -> bytes:
        """A bulk payload naming this server's current address (a record of an
        earlier run names the data port that run had); other payloads as they are."""
        if not is_bulk(payload) or not self._port:
            return payload
        try:
            descriptor = wire.parse_descriptor(payload)
        except BulkError:
            return payload
        if descriptor.address == self.address:
            return payload
        return wire.make_descriptor(self.address, descriptor.blob_id, descriptor.key,
                                    descriptor.size)

    def drop_all_kept(self, besides: Iterable[bytes] = ()) -> None:
        """Discard every kept blob, and every file of the keep folder, but those of
        the payloads ``besides``."""
        spared = set()
        for payload in besides:
            try:
                spared.add(wire._digest(wire.parse_descriptor(payload).blob_id))
            except BulkError:
                pass
        with self._lock:
            kept = [b for key, b in self._by_id.items()
                    if b.keep is not None and key not in spared]
        for blob in kept:
            self._kill(blob, "discarded")
        if self.keep_dir is None:
            return
        try:
            names = os.listdir(self.keep_dir)
        except OSError:
            return
        spared_names = {key.hex() for key in spared}
        for name in names:
            if name in spared_names or name.removesuffix(".part") in spared_names:
                continue
            try:
                os.unlink(os.path.join(self.keep_dir, name))
            except OSError:
                pass

    def drop_payload(self, payload: bytes) -> None:
        """Discard the kept blob of a payload (a purged record's)."""
        if not is_bulk(payload):
            return
        try:
            self.discard(wire.parse_descriptor(payload).blob_id)
        except BulkError:
            return

    def _write_kept(self, blob: _Blob) -> None:
        """(a blob thread) Write a kept, complete blob to its file and free its memory
        (once: a second call does nothing)."""
        with blob.cond:
            if blob.writing:
                return  # (the write running calls blob.written)
            if not blob.on_disk:
                blob.writing = True
        try:
            self._write_file(blob)
        finally:
            with blob.cond:
                blob.writing = False
                written, blob.written = blob.written, []
            for call in written:
                call()

    def _write_file(self, blob: _Blob) -> None:
        with blob.cond:
            if blob.on_disk:
                return
            view, path = blob.view, blob.keep
        if view is None or path is None:
            return
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path + ".part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(view[:blob.ct_size])
            finally:
                view = None
            os.replace(path + ".part", path)
        except OSError as exc:  # served from memory then, as any blob
            log.warning("bulk: could not keep a blob on disk (%s): it stays in memory", exc)
            return
        with blob.cond:
            if blob.dead and blob.reason == "discarded":  # purged while it was written
                try:
                    os.unlink(path)
                except OSError:
                    pass
                return
            if blob.dead:
                return
            blob.on_disk = True
            buffer, blob.buffer, blob.view = blob.buffer, None, None
            busy = bool(blob.downloads)
        if buffer is not None and not busy:
            self._give_buffer(buffer)

    def _kept_on_disk(self, blob_id: bytes) -> _Blob | None:
        """A kept blob of an earlier run (its file exists): registered again."""
        path = self._keep_path(blob_id)
        if path is None:
            return None
        try:
            ct_size = os.path.getsize(path)
        except OSError:
            return None
        blob = _Blob(blob_id, secrets.token_bytes(wire.TOKEN_SIZE), 0, 1, self._clock())
        blob.ct_size = ct_size
        blob.watermark = ct_size
        blob.complete = blob.on_disk = True
        blob.keep = path
        with self._lock:
            blob = self._by_id.setdefault(wire._digest(blob_id), blob)
        return blob

    def forfeit(self, blob_id: bytes) -> None:
        """One reader of a blob will never come (its engine is gone, its command
        was dropped): expect one reader fewer, and free the blob if that was the
        last one still to read it.  Unknown ids are ignored."""
        with self._lock:
            blob = self._by_id.get(wire._digest(blob_id))
        if blob is None or not hmac.compare_digest(blob.blob_id, blob_id):
            return
        with blob.cond:
            blob.readers -= 1
            finished = blob.completed >= blob.readers and not blob.dead and blob.keep is None
        if finished:
            self._kill(blob, "no reader left", reusable=blob.downloads == 0)

    def release_payload(self, payload: bytes, whole: bool) -> None:
        """A payload will not be delivered: if it names a blob here, free it
        (``whole``) or give up one reader's share of it.  Inline payloads and
        malformed descriptors are ignored."""
        if not is_bulk(payload):
            return
        try:
            blob_id = wire.parse_descriptor(payload).blob_id
        except BulkError:
            return
        if whole:
            self.discard(blob_id)
        else:
            self.forfeit(blob_id)

    def expire(self, now: float | None = None) -> int:
        """Free the blobs idle for ``expire_after`` seconds; return how many.

        A blob is idle when no bytes of it are moving: no upload is running and
        no download is reading a blob whose upload began.  Downloads that wait
        for an upload that never came are aborted.  Called periodically by the
        accept thread; tests may call it with a chosen ``now``.
        """
        now = self._clock() if now is None else now
        self._trim_cache(now)
        with self._lock:
            blobs = list(self._by_id.values())
        expired = 0
        for blob in blobs:
            with blob.cond:
                busy = blob.uploading or (blob.downloads and blob.watermark > 0)
                stale = (not busy and blob.keep is None
                         and now - blob.last_activity >= self.expire_after)
            if stale:
                log.info("bulk: blob expired after %.0f s idle", self.expire_after)
                self._kill(blob, "expired")
                expired += 1
        return expired

    def stats(self) -> dict:
        """Counters: ``blobs`` reserved, ``bytes`` of ciphertext buffers held by
        them, ``cached`` bytes of idle buffers kept for reuse, open ``connections``."""
        with self._lock:
            blobs = list(self._by_id.values())
            connections = len(self._connections)
            cached = sum(len(buf) for buf, _ in self._cache)
        held = sum(len(b.buffer) for b in blobs if b.buffer is not None)
        return {"blobs": len(blobs), "bytes": held, "cached": cached, "connections": connections}

    def _take_buffer(self, n: int) -> bytearray | mmap.mmap:
        """A buffer of at least ``n`` bytes: a cached one of fitting size, or a new one."""
        with self._lock:
            for i, (buf, _) in enumerate(self._cache):
                if n <= len(buf) <= n + (n >> 3) + (2 << 20):
                    del self._cache[i]
                    return buf
        return wire.allocate(n)

    def _give_buffer(self, buf: bytearray | mmap.mmap) -> None:
        """Keep ``buf`` (no longer referenced by any transfer) for reuse, or drop it."""
        if len(buf) < wire._HUGE_THRESHOLD or len(buf) > self.cache_bytes:
            return
        with self._lock:
            if self._stopping.is_set():
                return
            self._cache.append((buf, self._clock()))
            while len(self._cache) > wire._CACHE_BUFFERS or (
                sum(len(b) for b, _ in self._cache) > self.cache_bytes
            ):
                self._cache.pop(0)

    def _trim_cache(self, now: float) -> None:
        with self._lock:
            self._cache = [(b, t) for b, t in self._cache if now - t < wire._CACHE_SECONDS]

    # -- internals

    def _tick(self) -> float:
        return min(1.0, max(0.05, self.expire_after / 10))

    def _kill(self, blob: _Blob, reason: str, reusable: bool = False) -> None:
        """Mark ``blob`` dead, wake and abort its transfers, forget it.

        ``reusable``: the blob was read by all its readers and no transfer
        holds its buffer any more, which may then be cached for reuse.
        """
        with blob.cond:
            if not blob.dead:
                blob.dead = True
                blob.reason = reason
            sockets = list(blob.sockets)
            # Running transfers keep their own views; the memory goes with the last one.
            buffer = blob.buffer
            reusable = reusable and not sockets and not blob.uploading and not blob.downloads
            blob.buffer = None
            blob.view = None
            blob.cond.notify_all()
            written = [] if blob.writing else blob.written  # (a write running calls them)
            if not blob.writing:
                blob.written = []
        for call in written:
            call()
        for sock in sockets:
            _shutdown(sock)
        if reusable and buffer is not None:
            self._give_buffer(buffer)
        with self._lock:
            key = wire._digest(blob.blob_id)
            if self._by_id.get(key) is blob:
                del self._by_id[key]
            key = wire._digest(blob.token)
            if self._by_token.get(key) is blob:
                del self._by_token[key]

    def _accept_loop(self) -> None:
        listener = self._listener
        next_expiry = self._clock() + self._tick()
        while not self._stopping.is_set() and listener is not None:
            try:
                sock, peer = listener.accept()
            except TimeoutError:
                sock = None
            except OSError as exc:
                if self._stopping.is_set():
                    break
                log.warning("bulk: accept failed: %s", exc)
                self._stopping.wait(0.1)
                continue
            if sock is not None:
                self._admit(sock, peer)
            if self._clock() >= next_expiry:
                next_expiry = self._clock() + self._tick()
                try:
                    self.expire()
                except Exception:  # pragma: no cover - never let the loop die
                    log.exception("bulk: expiry failed")

    def _admit(self, sock: socket.socket, peer: Any) -> None:
        evict = None
        with self._lock:
            if len(self._connections) >= self.max_connections or self._stopping.is_set():
                full = True
            else:
                full = False
                self._connections.add(sock)
                # Connections that have not yet shown a valid token are few and
                # short-lived; strangers holding many open must not crowd out
                # real transfers: past the limit the oldest one goes.
                self._unproven[sock] = None
                if len(self._unproven) > MAX_UNPROVEN:
                    evict = next(iter(self._unproven))
                    del self._unproven[evict]
        if evict is not None:
            _shutdown(evict)
        if full:
            log.warning("bulk: too many data connections, refusing %s", peer)
            sock.close()
            return
        thread = threading.Thread(
            target=self._serve, args=(sock, peer), name="plait-bulk-conn", daemon=True
        )
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _serve(self, sock: socket.socket, peer: Any) -> None:
        try:
            sock.settimeout(wire.HEADER_TIMEOUT)
            header = wire._recv_exact(sock, wire._REQUEST.size)
            if len(header) != wire._REQUEST.size:
                log.warning("bulk: %s closed before sending a request", peer)
                return
            magic, version, op, secret = wire._REQUEST.unpack(header)
            if magic != wire.MAGIC or version != wire.PROTOCOL_VERSION or op not in (wire.OP_UPLOAD, wire.OP_DOWNLOAD):
                log.warning("bulk: garbage request from %s, closing", peer)
                return
            wire._tune(sock, self.io_timeout)
            if op == wire.OP_UPLOAD:
                self._serve_upload(sock, peer, secret)
            else:
                self._serve_download(sock, peer, secret)
        except OSError as exc:
            log.warning("bulk: connection from %s failed: %s", peer, wire._describe_os_error(exc))
        except Exception:  # pragma: no cover - a bug; keep serving
            log.exception("bulk: connection from %s failed", peer)
        finally:
            with self._lock:
                self._connections.discard(sock)
                self._unproven.pop(sock, None)
                self._threads.discard(threading.current_thread())
            sock.close()

    def _refuse(self, sock: socket.socket, peer: Any, reason: str) -> None:
        log.warning("bulk: refused %s: %s", peer, reason)
        data = reason.encode("utf-8")[:255]
        try:
            sock.sendall(wire.ERROR + bytes([len(data)]) + data)
        except OSError:
            pass

    def _proven(self, sock: socket.socket) -> None:
        with self._lock:
            self._unproven.pop(sock, None)

    def _lookup(self, index: dict[bytes, _Blob], secret: bytes, token: bool) -> _Blob | None:
        with self._lock:
            blob = index.get(wire._digest(secret))
            if blob is None:
                return None
            if not hmac.compare_digest(blob.token if token else blob.blob_id, secret):
                return None  # pragma: no cover - a SHA-256 collision
            if token:
                # One-time: whatever happens next, this token is spent.
                del index[wire._digest(secret)]
            return blob

    def _serve_upload(self, sock: socket.socket, peer: Any, token: bytes) -> None:
        blob = self._lookup(self._by_token, token, token=True)
        if blob is None:
            self._refuse(sock, peer, "unknown or spent upload token")
            return
        self._proven(sock)
        with blob.cond:
            if blob.dead:
                reason = blob.reason
            else:
                reason = ""
                try:
                    blob.buffer = self._take_buffer(blob.ct_size)
                except (MemoryError, OSError):
                    reason = f"cannot wire.allocate {blob.ct_size} bytes"
                else:
                    blob.view = memoryview(blob.buffer)
                    blob.uploading = True
                    blob.sockets.add(sock)
                    blob.last_activity = self._clock()
            view = blob.view
        if reason:
            self._refuse(sock, peer, f"blob unavailable: {reason}")
            self._kill(blob, reason)
            return
        assert view is not None  # no reason: the buffer was taken and its view made above
        total = blob.ct_size
        received = published = 0
        failure = "upload aborted"
        try:
            sock.sendall(wire.OK)
            while received < total:
                n = sock.recv_into(view[received:], min(total - received, wire._IO_SLICE))
                if not n:
                    failure = f"upload truncated at {received} of {total} bytes"
                    break
                received += n
                if received - published >= wire._NOTIFY_STEP or received == total:
                    with blob.cond:
                        if blob.dead:
                            break
                        blob.watermark = published = received
                        blob.cond.notify_all()
            else:
                with blob.cond:
                    blob.uploading = False
                    blob.complete = True
                    blob.last_activity = self._clock()
                    blob.sockets.discard(sock)
                    kept = blob.keep is not None
                sock.sendall(wire.OK)
                if kept:
                    self._write_kept(blob)
                return
        except OSError as exc:
            failure = f"upload failed at {received} of {total} bytes: {wire._describe_os_error(exc)}"
        if not blob.dead:
            log.warning("bulk: %s from %s", failure, peer)
        self._kill(blob, failure)

    def _serve_download(self, sock: socket.socket, peer: Any, blob_id: bytes) -> None:
        blob = self._lookup(self._by_id, blob_id, token=False) or self._kept_on_disk(blob_id)
        if blob is None:
            self._refuse(sock, peer, "unknown, expired or discarded blob")
            return
        self._proven(sock)
        with blob.cond:
            if blob.dead:
                reason = blob.reason
            elif blob.claimed >= blob.readers and blob.keep is None:
                reason = "every reader of this blob is served already"
            else:
                reason = ""
                blob.claimed += 1
                blob.downloads += 1
                blob.sockets.add(sock)
                blob.last_activity = self._clock()
        if reason:
            self._refuse(sock, peer, f"blob unavailable: {reason}")
            return
        total = blob.ct_size
        sent = 0
        done = False
        try:
            sock.sendall(wire.OK + wire._LENGTH.pack(total))
            while sent < total:
                with blob.cond:
                    stalled = False
                    while blob.watermark <= sent and not blob.dead and not stalled:
                        # A running upload has its own inactivity timeout; without
                        # one, give up after io_timeout like an idle socket would.
                        stalled = not blob.cond.wait(self.io_timeout) and not blob.uploading
                    if blob.dead:
                        log.info("bulk: download for %s aborted: %s", peer, blob.reason)
                        break
                    if stalled:
                        log.warning(
                            "bulk: download for %s gave up: no upload for %.1f s",
                            peer,
                            self.io_timeout,
                        )
                        break
                    end = blob.watermark
                    view = blob.view
                    path = blob.keep if blob.on_disk else None
                if path is not None:  # a kept blob, on disk: the rest from its file
                    with open(path, "rb") as f:
                        sent += sock.sendfile(f, offset=sent, count=end - sent)
                    continue
                assert view is not None  # data was uploaded and the blob is not dead
                while sent < end:
                    step = min(end, sent + wire._IO_SLICE)
                    sock.sendall(view[sent:step])
                    sent = step
            else:
                done = wire._recv_exact(sock, 1) == wire.OK
                if not done:
                    log.warning("bulk: %s did not acknowledge its download", peer)
        except OSError as exc:
            log.warning(
                "bulk: download to %s failed at %d of %d bytes: %s",
                peer,
                sent,
                total,
                wire._describe_os_error(exc),
            )
        view = None
        with blob.cond:
            blob.downloads -= 1
            blob.sockets.discard(sock)
            blob.last_activity = self._clock()
            if done:
                blob.completed += 1
            else:
                blob.claimed -= 1  # another attempt may take this reader's place
            finished = blob.completed >= blob.readers and blob.keep is None
        if finished:
            self._kill(blob, "read by every reader", reusable=True)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
