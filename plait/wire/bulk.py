"""The bulk data channel: large payloads, relayed by the controller, encrypted end to end.

Payloads above :data:`plait.interfaces.engine.INLINE_LIMIT` do not travel in
foolscap messages.  The sender pickles the object once (protocol 5, large
buffers out-of-band), uploads it to the controller's :class:`BlobServer` over a
plain TCP connection and hands the receiver a small *descriptor* (through the
TLS control channel).  The receiver downloads the blob from the same server.

Security
--------
The data port is plain TCP, so the bytes are protected end to end: the sender
draws a fresh random 128-bit AES-GCM key per transfer and encrypts the frame
(see :mod:`plait.wire.serialize`) in chunks of :data:`CHUNK_SIZE` bytes.
Chunk ``i`` uses the nonce ``i`` (96-bit big-endian; the key is never reused)
and authenticates, as associated data, the plaintext size, the chunk index and
a final-chunk flag, so that tampering, reordering, splicing and truncation are
all detected by the receiver.  The relay never decrypts (the plain TCP hops
carry nothing readable or forgeable without the key), which is what makes it
fast.  The key travels only inside the descriptor, which the control channel
carries over TLS (the controller, trusted with inline payloads anyway, can see
it there); so do the upload token and the blob id.  Both are 32 random bytes:
the upload token lets one connection upload the blob once, the blob id lets
``readers`` connections download it.

Wire protocol of the data port
------------------------------
A peer opens a TCP connection and sends a 38-byte request::

    b"PLBK" | u8 version (1) | b"U" or b"D" | 32-byte upload token or blob id

The server answers ``b"K"`` (for a download followed by the ciphertext length
as u64 little-endian) or ``b"E"`` + u8 length + a short reason, then closes.
Garbage closes the connection without an answer.  After ``b"K"``:

* upload: the peer streams the whole ciphertext; the server answers ``b"K"``
  once it holds all of it;
* download: the server streams the ciphertext as it arrives from the upload
  (downloads may connect before the upload starts); the peer answers ``b"K"``
  once it has all of it, which counts one of the blob's ``readers``.

Ciphertext layout: chunk after chunk, each ``ciphertext || 16-byte tag``; the
plaintext chunks all have :data:`CHUNK_SIZE` bytes except the last one, and an
empty payload still has one (empty) chunk.

Memory
------
The server holds one ciphertext buffer per blob (payload size plus 16 bytes
per chunk), filled by the upload and read by the downloads in place; a peer
adds one chunk of scratch space to the payload.  Buffers of 4 MiB and more are
anonymous mappings with transparent huge pages requested (see
:func:`allocate`); the server keeps up to two buffers of fully read blobs for
ten seconds for the next uploads (``cache_bytes``).  A fetched object's numpy
arrays are views into the one buffer the download was decrypted into.

Threads
-------
:class:`BlobServer` runs an accept loop in a daemon thread and one daemon thread
per data connection, with blocking sockets; its public methods only take short
locks and can be called from the reactor thread (``stop`` joins its threads).
The peer-side functions :meth:`Outgoing.send` and :func:`fetch` block; call them
from a worker thread (``twisted.internet.threads.deferToThread``) or from a
process's main thread, never from the reactor thread.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import secrets
import socket
import struct
import threading
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from plait.wire.errors import BulkError, BulkIntegrityError, PlaitConnectionError
from plait.wire.serialize import (
    BULK,
    INLINE_LIMIT,
    frame_parts,
    pack_framed,
    serialize_parts,
    unframe,
)
from plait.wire.tunnel import route

log = logging.getLogger(__name__)

#: Plaintext bytes per encrypted chunk (the last chunk may be shorter).
CHUNK_SIZE = 1 << 20
#: Bytes of the AES-GCM tag that follows each chunk's ciphertext.
TAG_SIZE = 16
KEY_SIZE = 16
TOKEN_SIZE = 32
PROTOCOL_VERSION = 1
MAGIC = b"PLBK"
OP_UPLOAD = b"U"
OP_DOWNLOAD = b"D"
OK = b"K"
ERROR = b"E"

_REQUEST = struct.Struct("<4sBc32s")
_LENGTH = struct.Struct("<Q")
_AAD = struct.Struct("<12sQQB")
_AAD_PREFIX = b"plait-bulk-1"
_DESCRIPTOR = struct.Struct("<cB32s16sQH")

#: Seconds a peer may take to send its request header.
HEADER_TIMEOUT = 10.0
#: Default seconds of socket inactivity after which a transfer is abandoned.
IO_TIMEOUT = 60.0
#: Bytes the relay receives before waking the downloads waiting on a blob.
_NOTIFY_STEP = 1 << 20
#: Largest single socket call on the relay (keeps per-call timeouts meaningful).
_IO_SLICE = 8 << 20
#: Kernel socket buffer size asked for on data connections (0: kernel autotuning).
_SOCKET_BUFFER = 4 << 20
#: Buffers at least this large are anonymous mappings backed by huge pages.
_HUGE_THRESHOLD = 4 << 20
#: Idle ciphertext buffers the server keeps for reuse, and for how long (seconds).
_CACHE_BUFFERS = 2
_CACHE_SECONDS = 10.0


# -- shared helpers ---------------------------------------------------------------------


def chunk_count(size: int) -> int:
    """Number of encrypted chunks for ``size`` plaintext bytes (at least one)."""
    return max(1, -(-size // CHUNK_SIZE))


def ciphertext_size(size: int) -> int:
    """Bytes on the wire (and held by the server) for ``size`` plaintext bytes."""
    return size + TAG_SIZE * chunk_count(size)


def allocate(n: int) -> bytearray | mmap.mmap:
    """A zeroed, writable buffer of ``n`` bytes, cheap to fill when large.

    Large buffers are private anonymous mappings with transparent huge pages
    requested (``MADV_HUGEPAGE``): first-touch page faults on a fresh 100 MB
    ``bytearray`` cost more than the network transfer itself.  The memory is
    unmapped when the last view of it (e.g. a numpy array) goes away.
    """
    if n >= _HUGE_THRESHOLD and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except (OSError, ValueError, AttributeError, TypeError):
            return bytearray(n)
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # pragma: no cover - kernels without THP
            pass
        return buf
    return bytearray(n)


_scratch = threading.local()


def _scratch_buffer(name: str, n: int) -> memoryview:
    """A per-thread reusable buffer of at least ``n`` bytes (first ``n`` returned).

    Reusing it spares the page faults of a fresh megabyte on every transfer.
    """
    buf = getattr(_scratch, name, None)
    if buf is None or len(buf) < n:
        buf = bytearray(n)
        setattr(_scratch, name, buf)
    return memoryview(buf)[:n]


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(size: int, index: int, final: bool) -> bytes:
    return _AAD.pack(_AAD_PREFIX, size, index, final)


def _digest(secret: bytes) -> bytes:
    """Index key for a secret, so that dict look-ups do not compare secrets."""
    return hashlib.sha256(secret).digest()


def _tune(sock: socket.socket, timeout: float | None) -> None:
    """Blocking mode with kernel-level send/receive timeouts and large buffers.

    Kernel timeouts (``SO_RCVTIMEO``/``SO_SNDTIMEO``) keep the fast path to one
    system call per transfer, where ``settimeout`` adds a ``poll`` before each.
    """
    sock.settimeout(None)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF) if _SOCKET_BUFFER else ():
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
        except OSError:  # pragma: no cover - platform limits
            pass
    if timeout is not None:
        seconds = int(timeout)
        value = struct.pack("@ll", seconds, int((timeout - seconds) * 1e6))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
        except OSError:  # pragma: no cover - platforms without them
            sock.settimeout(timeout)


def _recv_into(sock: socket.socket, view: memoryview) -> int:
    """Fill ``view``; return how many bytes arrived before end of stream."""
    got = 0
    total = view.nbytes
    while got < total:
        n = sock.recv_into(view[got:], total - got, socket.MSG_WAITALL)
        if not n:
            break
        got += n
    return got


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    got = _recv_into(sock, memoryview(buf))
    return bytes(buf[:got])


def _describe_os_error(exc: OSError) -> str:
    if isinstance(exc, (BlockingIOError, TimeoutError)):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _read_reply(sock: socket.socket, what: str, extra: int = 0) -> bytes:
    """Read the server's answer to a request; raise BulkError on a refusal."""
    kind = _recv_exact(sock, 1)
    if kind == OK:
        body = _recv_exact(sock, extra)
        if len(body) == extra:
            return body
    elif kind == ERROR:
        length = _recv_exact(sock, 1)
        reason = _recv_exact(sock, length[0]).decode("utf-8", "replace") if length else ""
        raise BulkError(f"the bulk data server refused the {what}: {reason or 'no reason'}")
    raise BulkError(f"the bulk data server closed the connection during the {what} request")


# -- peer side ---------------------------------------------------------------------------


class Descriptor(NamedTuple):
    """What a receiver needs to fetch a blob (parsed from a ``b"B"`` payload)."""

    address: tuple[str, int]
    blob_id: bytes
    key: bytes
    size: int


def make_descriptor(address: tuple[str, int], blob_id: bytes, key: bytes, size: int) -> bytes:
    """Encode a descriptor payload (starts with :data:`_serialize.BULK`)."""
    host, port = address
    if len(blob_id) != TOKEN_SIZE or len(key) != KEY_SIZE:
        raise ValueError("blob ids have 32 bytes and keys 16")
    host_bytes = host.encode("utf-8")
    if len(host_bytes) > 255:
        raise ValueError("host name too long")
    return _DESCRIPTOR.pack(BULK, PROTOCOL_VERSION, blob_id, key, size, port) + host_bytes


def parse_descriptor(data: bytes) -> Descriptor:
    """Decode a ``b"B"`` payload; raise BulkError when it is malformed."""
    if len(data) < _DESCRIPTOR.size or data[:1] != BULK:
        raise BulkError("not a bulk descriptor")
    kind, version, blob_id, key, size, port = _DESCRIPTOR.unpack_from(data, 0)
    if version != PROTOCOL_VERSION:
        raise BulkError(f"unsupported bulk descriptor version {version}")
    try:
        host = bytes(data[_DESCRIPTOR.size :]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BulkError("bad host name in bulk descriptor") from exc
    return Descriptor((host, port), blob_id, key, size)


def _connect(address: tuple[str, int], timeout: float | None) -> socket.socket:
    host, port = address
    try:
        dial = route(host, port)  # through an SSH tunnel, if the host is reached so
    except PlaitConnectionError as exc:
        raise BulkError(f"cannot reach the bulk data server at {host}:{port}: {exc}") from None
    try:
        sock = socket.create_connection(dial, timeout=timeout)
    except OSError as exc:
        raise BulkError(
            f"cannot reach the bulk data server at {host}:{port}: {_describe_os_error(exc)}"
        ) from exc
    _tune(sock, timeout)
    return sock


class Outgoing:
    """A large object, pickled once, ready to be uploaded to a :class:`BlobServer`.

    It references the object's buffers (numpy array data) without copying
    them: do not modify the object until :meth:`send` has returned.  Each
    Outgoing has its own key and is uploaded at most once.
    """

    size: int

    def __init__(self, segments: list[memoryview], size: int):
        self._segments = segments
        self.size = size
        self._key = secrets.token_bytes(KEY_SIZE)
        self._sent = False
        self._lock = threading.Lock()

    @property
    def ciphertext_size(self) -> int:
        """Bytes that the upload sends (and the server holds)."""
        return ciphertext_size(self.size)

    def descriptor(self, address: tuple[str, int], blob_id: bytes) -> bytes:
        """The payload (``b"B"...``) that lets a receiver :func:`fetch` this object."""
        return make_descriptor(address, blob_id, self._key, self.size)

    def send(
        self, address: tuple[str, int], upload_token: bytes, *, timeout: float | None = IO_TIMEOUT
    ) -> None:
        """Upload to the server at ``address``; block until it holds every byte.

        ``timeout`` bounds each socket operation (not the whole upload).
        Raises BulkError when the server refuses, or the connection fails.  A
        send refused before any data went out (e.g. a wrong token) may be
        retried; once data was sent, never again (the key and nonces would
        be reused).
        """
        if len(upload_token) != TOKEN_SIZE:
            raise BulkError("an upload token has 32 bytes")
        self._check_unsent()
        host, port = address
        sock = _connect(address, timeout)
        try:
            sock.sendall(_REQUEST.pack(MAGIC, PROTOCOL_VERSION, OP_UPLOAD, upload_token))
            _read_reply(sock, "upload")
            with self._lock:
                self._check_unsent()
                self._sent = True
            self._stream(sock)
            if _recv_exact(sock, 1) != OK:
                raise BulkError(
                    f"the bulk data server at {host}:{port} did not confirm the upload"
                )
        except OSError as exc:
            raise BulkError(
                f"upload to the bulk data server at {host}:{port} failed: "
                f"{_describe_os_error(exc)}"
            ) from exc
        finally:
            sock.close()
        # The buffers may now be modified and freed.
        self._segments = []

    def _check_unsent(self) -> None:
        if self._sent:
            raise BulkError("this Outgoing was already uploaded; call outgoing() again")

    def _chunks(self):
        """Yield the plaintext in chunks of CHUNK_SIZE bytes (views, copied only
        where a chunk straddles segments)."""
        scratch = _scratch_buffer("gather", min(CHUNK_SIZE, self.size))
        pending = 0  # bytes gathered in scratch
        for seg in self._segments:
            pos = 0
            n = seg.nbytes
            while pos < n:
                if pending == 0 and n - pos >= CHUNK_SIZE:
                    yield seg[pos : pos + CHUNK_SIZE]
                    pos += CHUNK_SIZE
                    continue
                take = min(CHUNK_SIZE - pending, n - pos)
                scratch[pending : pending + take] = seg[pos : pos + take]
                pending += take
                pos += take
                if pending == CHUNK_SIZE:
                    yield scratch
                    pending = 0
        if pending or self.size == 0:
            yield scratch[:pending]

    def _stream(self, sock: socket.socket) -> None:
        aead = AESGCM(self._key)
        size = self.size
        last = chunk_count(size) - 1
        out = _scratch_buffer("sealed", min(CHUNK_SIZE, size) + TAG_SIZE)
        index = 0
        for chunk in self._chunks():
            n = chunk.nbytes + TAG_SIZE
            aead.encrypt_into(_nonce(index), chunk, _aad(size, index, index == last), out[:n])
            sock.sendall(out[:n])
            index += 1
        if index != last + 1:  # pragma: no cover - internal consistency
            raise BulkError("internal error: chunk count mismatch")


def outgoing(obj: Any, pickler: str = "cloudpickle") -> bytes | Outgoing:
    """Pickle ``obj`` once; inline payload bytes if small enough, else an :class:`Outgoing`.

    The inline payload is understood by :func:`plait.wire.serialize.deserialize`.
    """
    head, buffers = serialize_parts(obj, pickler)
    if not buffers and len(head) + 1 <= INLINE_LIMIT:
        return pack_framed(head, buffers)  # the plain b"P" payload
    segments, size = frame_parts(head, buffers)
    if size + 1 <= INLINE_LIMIT:
        return pack_framed(head, buffers)
    return Outgoing(segments, size)


def fetch(descriptor: bytes, *, timeout: float | None = IO_TIMEOUT) -> Any:
    """Download, authenticate, decrypt and unpickle the blob ``descriptor`` names.

    Blocks.  The plaintext is decrypted into one preallocated buffer (see
    :func:`allocate`) and numpy arrays are rebuilt as (writable) views into
    it, without further copies.
    ``timeout`` bounds each socket operation, including the wait for an upload
    that has not started yet.  Raises BulkError (BulkIntegrityError when the
    data was tampered with) or SerializationError.
    """
    desc = parse_descriptor(descriptor)
    return unframe(_download(desc, timeout))


def _download(desc: Descriptor, timeout: float | None) -> bytearray | mmap.mmap:
    size = desc.size
    expected = ciphertext_size(size)
    host, port = desc.address
    where = f"the bulk data server at {host}:{port}"
    try:
        plain = allocate(size)
    except (MemoryError, OverflowError, ValueError) as exc:
        raise BulkError(f"cannot allocate {size} bytes for a download: {exc!r}") from exc
    out = memoryview(plain)
    staging = _scratch_buffer("sealed", min(CHUNK_SIZE, size) + TAG_SIZE)
    aead = AESGCM(desc.key)
    last = chunk_count(size) - 1
    sock = _connect(desc.address, timeout)
    received = 0
    try:
        sock.sendall(_REQUEST.pack(MAGIC, PROTOCOL_VERSION, OP_DOWNLOAD, desc.blob_id))
        (held,) = _LENGTH.unpack(_read_reply(sock, "download", _LENGTH.size))
        if held != expected:
            raise BulkError(
                f"{where} holds {held} bytes for this blob, the descriptor implies {expected}"
            )
        for index in range(last + 1):
            start = index * CHUNK_SIZE
            n = min(CHUNK_SIZE, size - start)
            view = staging[: n + TAG_SIZE]
            got = _recv_into(sock, view)
            received += got
            if got != n + TAG_SIZE:
                raise BulkError(
                    f"{where} closed the download after {received} of {expected} bytes "
                    "(upload failed, blob discarded or expired)"
                )
            try:
                aead.decrypt_into(
                    _nonce(index), view, _aad(size, index, index == last), out[start : start + n]
                )
            except InvalidTag:
                raise BulkIntegrityError(
                    f"bulk data from {where} failed authentication at chunk {index}: "
                    "tampered with or corrupt"
                ) from None
        sock.sendall(OK)
    except OSError as exc:
        raise BulkError(
            f"download from {where} failed after {received} of {expected} bytes: "
            f"{_describe_os_error(exc)}"
        ) from exc
    finally:
        sock.close()
    return plain
