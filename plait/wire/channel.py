"""Channels: a lean TLS transport for the calls on the hot path.

A foolscap call costs about half a millisecond per round trip on a fast
machine, most of it in foolscap's own Python code; a plain Twisted TLS
exchange costs a quarter of that.  A channel carries the *same* remote
methods of the *same* adapters (``remote_execute``, ``remote_run_task``...),
checked against the *same* ``RemoteInterface`` constraints, with less
machinery in between.

Security is unchanged.  A FURL is still the only way in: whoever holds a
foolscap reference may ask it for a *ticket* (``open_channel``), a one-time
random token and the channel port.  The caller opens TLS to that port,
checks that the server's certificate is the one the FURL names (its hash is
the FURL's tub id), and presents the token.  The channel is then bound to
the Referenceable that issued the ticket: it offers that object's remote
methods and nothing else.  Tokens are compared in constant time and expire.

Frames are 4-byte lengths followed by a pickle restricted to plain types
(``safe_loads`` refuses to load any class, so a peer can never make the
other side run code by unpickling).  Either end may call the other: a
request ``(REQUEST, id, method, args)`` is answered by
``(RESPONSE, id, ok, value)``; a request whose id is None
(``callRemoteOnly``) is not answered.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import secrets
import struct
import time
from collections.abc import Callable
from typing import Any

from foolscap.crypto import digest32
from foolscap.schema import Violation
from twisted.internet import defer, protocol, ssl
from twisted.internet import reactor as _twisted_reactor
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from plait.wire.errors import ChannelClosed, ChannelError
from plait.wire.serialize import loads_plain

reactor: Any = _twisted_reactor  # provides every IReactor* interface; typed by Twisted as a bare protocol

REQUEST, RESPONSE, HELLO, WELCOME = 0, 1, 2, 3

#: How long an unused ticket stays valid, and how many may be outstanding.
TICKET_LIFETIME = 60.0
MAX_TICKETS = 1024
#: Frames may be this large once a channel is bound (inline payloads of many engines).
MAX_FRAME = 1 << 30
#: ... and only this large before (a stranger must not make us buffer much).
MAX_HELLO = 256
#: Seconds a new connection has to present its ticket.
HELLO_TIMEOUT = 10.0
#: Connections kept at once that have not presented a ticket yet.
MAX_UNPROVEN = 32
_LENGTH = struct.Struct("!I")  # Int32StringReceiver's prefix


#: A peer silent this long (seconds) on an idle channel is probed, then dropped
#: after three unanswered probes five seconds apart: a vanished host is noticed.
KEEPALIVE_IDLE = 10


def tune_socket(sock: Any) -> None:
    """Channel socket options: no Nagle delay, and TCP keepalives.

    Calls are small frames, often two back to back: with Nagle's algorithm
    the second would wait tens of ms for the first's acknowledgement.
    Keepalives make a call to a host that vanished fail instead of waiting
    for ever.
    """
    import socket

    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", 5),
                        ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):  # Linux; elsewhere the system's defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def safe_dumps(obj: Any) -> bytes:
    """A frame's pickle (not checked: the peer's :func:`safe_loads` refuses classes)."""
    return pickle.dumps(obj, protocol=5)


#: Unpickle a frame: plain data only, see :func:`plait.wire.serialize.loads_plain`.
safe_loads = loads_plain


def tub_id_of(x509: Any) -> str:
    """The foolscap tub id of a pyOpenSSL certificate."""
    return digest32(x509.digest("sha1"))


@implementer(IHandshakeListener)
class ChannelProtocol(Int32StringReceiver):
    """One end of a channel.  Calls go out with :meth:`callRemote`; calls
    coming in are dispatched to :attr:`local` (a foolscap Referenceable)."""

    MAX_LENGTH = MAX_HELLO
    log = Logger()

    def __init__(self) -> None:
        self.local: Any = None
        self._schema: Any = None
        self._next_id = 0
        self._pending: dict[int, defer.Deferred] = {}
        self._on_disconnect: list[tuple[Callable, tuple]] = []
        self._closed = False
        self.ready: defer.Deferred = defer.Deferred()

    # -- the foolscap-like surface ---------------------------------------------------
    def callRemote(self, method: str, *args: Any) -> defer.Deferred:
        if self._closed:
            return defer.fail(ChannelClosed(f"channel closed before calling {method}"))
        call_id = self._next_id
        self._next_id += 1
        d: defer.Deferred = defer.Deferred()
        self._pending[call_id] = d
        self.sendString(safe_dumps((REQUEST, call_id, method, args)))
        return d

    def callRemoteOnly(self, method: str, *args: Any) -> None:
        """Call ``method`` without asking for an answer (as foolscap's
        ``callRemoteOnly``): the peer runs it and sends nothing back; what it
        returns or raises is dropped (a failure is logged there)."""
        if not self._closed:
            self.sendString(safe_dumps((REQUEST, None, method, args)))

    def notifyOnDisconnect(self, callback: Callable, *args: Any) -> None:
        if self._closed:
            reactor.callLater(0, callback, *args)
        else:
            self._on_disconnect.append((callback, args))

    def bind(self, local: Any) -> None:
        """Serve calls from the peer with ``local``'s remote methods."""
        self.local = local
        self._schema = local.getInterface()

    @property
    def _tls(self) -> Any:
        """The connection's TLS transport (``abortConnection``, ``getPeerCertificate``):
        set once connected; Twisted types ``transport`` as a bare ``ITransport | None``."""
        return self.transport

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    # -- frames ----------------------------------------------------------------------
    def stringReceived(self, data: bytes) -> None:
        try:
            message = safe_loads(data)
            kind = message[0]
        except Exception as exc:
            self.log.warn("dropping a channel: unreadable frame ({e})", e=exc)
            self._tls.abortConnection()
            return
        if kind == REQUEST:
            self._dispatch(*message[1:])
        elif kind == RESPONSE:
            _, call_id, ok, value = message
            d = self._pending.pop(call_id, None)
            if d is None:
                return
            if ok:
                d.callback(value)
            else:
                d.errback(Failure(ChannelError(value)))
        else:
            self.frame(message)

    def frame(self, message: tuple) -> None:
        """Handle a handshake frame (subclasses)."""
        self._tls.abortConnection()

    def _dispatch(self, call_id: int | None, method: str, args: tuple) -> None:
        d = defer.maybeDeferred(self._invoke, method, args)
        if call_id is None:  # a call that wants no answer (callRemoteOnly)
            d.addErrback(lambda f: self.log.warn("a one-way {method} call failed: {e}",
                                                 method=method, e=f.value))
            return
        d.addCallbacks(
            lambda value: (True, value),
            lambda f: (False, f"{f.type.__name__}: {f.value} (in {method})"),
        )
        d.addCallback(lambda r: self._respond(call_id, *r))

    def _invoke(self, method: str, args: tuple) -> Any:
        if self.local is None or not isinstance(args, tuple):
            raise ChannelError("this end of the channel serves no calls")
        if self._schema is not None:
            try:
                schema = self._schema[method]
            except KeyError:
                raise Violation(f"no method {method!r} in {self._schema.__remote_name__}") from None
            schema.checkAllArgs(args, {}, True)
        return getattr(self.local, f"remote_{method}")(*args)

    def _respond(self, call_id: int, ok: bool, value: Any) -> None:
        if self._closed:
            return
        try:
            frame = safe_dumps((RESPONSE, call_id, ok, value))
        except Exception as exc:  # an adapter returned something unpicklable
            frame = safe_dumps((RESPONSE, call_id, False, f"unsendable result: {exc}"))
        self.sendString(frame)

    def lengthLimitExceeded(self, length: int) -> None:
        self.log.warn("dropping a channel: frame of {n} bytes is too large", n=length)
        self._tls.abortConnection()

    def connectionMade(self) -> None:
        # (the TLS wrapper hands attribute look-ups down to the TCP transport)
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            tune_socket(sock)

    def handshakeCompleted(self) -> None:
        pass

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._closed = True
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(Failure(ChannelClosed("the channel was closed")))
        callbacks, self._on_disconnect = self._on_disconnect, []
        for callback, args in callbacks:
            try:
                callback(*args)
            except Exception:
                self.log.failure("a disconnect callback failed")
        if not self.ready.called:
            self.ready.errback(Failure(ChannelClosed("the channel was closed while opening")))


# -- server side ---------------------------------------------------------------------


class _ServerProtocol(ChannelProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.ready.addErrback(lambda f: None)  # nobody waits on the server side
        self.welcomed = False
        self._deadline: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # A stranger gets HELLO_TIMEOUT seconds to present a ticket, and only
        # MAX_UNPROVEN strangers are kept at once (the oldest goes first).
        self._deadline = reactor.callLater(HELLO_TIMEOUT, self._tls.abortConnection)
        self.factory.unproven[self] = None
        if len(self.factory.unproven) > MAX_UNPROVEN:
            oldest = next(iter(self.factory.unproven))
            oldest.transport.abortConnection()

    def _proven(self) -> None:
        self.factory.unproven.pop(self, None)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._proven()
        super().connectionLost(reason)

    def stringReceived(self, data: bytes) -> None:
        if self.welcomed:
            super().stringReceived(data)
            return
        try:  # the first frame must be a ticket; anything else ends the connection
            message = safe_loads(data)
        except Exception:
            message = None
        if not (isinstance(message, tuple) and len(message) == 2 and message[0] == HELLO):
            self.log.warn("refused a channel: it did not start with a ticket")
            self._tls.abortConnection()
            return
        self.frame(message)

    def frame(self, message: tuple) -> None:
        if self.welcomed:
            self._tls.abortConnection()
            return
        ticket = self.factory.redeem(message[1])
        if ticket is None:
            self.log.warn("refused a channel: unknown or expired ticket")
            self._tls.abortConnection()
            return
        local, on_bound = ticket
        self.welcomed = True
        self._proven()
        self.MAX_LENGTH = MAX_FRAME
        if local is not None:
            self.bind(local)
        self.sendString(safe_dumps((WELCOME,)))
        if on_bound is not None:
            on_bound(self)


class ChannelServer(protocol.Factory):
    """Listens for channels with a Tub's certificate and redeems tickets."""

    protocol = _ServerProtocol

    def __init__(self, cert_pem: bytes, interface: str = "127.0.0.1", port: int = 0):
        self.cert_pem = cert_pem
        self.interface = interface
        self.listen_port = port  # 0: a random free port
        self.unproven: dict[_ServerProtocol, None] = {}  # connected, no ticket yet
        # sha256(token) -> (token, expiry, local, on_bound), oldest first
        self._tickets: dict[bytes, tuple[bytes, float, Any, Callable | None]] = {}
        self._port: Any = None

    def start(self) -> None:
        options = ssl.PrivateCertificate.loadPEM(self.cert_pem).options()
        try:
            self._port = reactor.listenSSL(self.listen_port, self, options,
                                           interface=self.interface)
        except CannotListenError as exc:
            raise OSError(f"cannot listen on {self.interface}:{self.listen_port}: "
                          f"{exc.socketError}") from None

    def stop(self) -> defer.Deferred:
        return defer.maybeDeferred(self._port.stopListening) if self._port else defer.succeed(None)

    @property
    def port(self) -> int:
        return self._port.getHost().port

    def issue(self, local: Any = None, on_bound: Callable[[ChannelProtocol], None] | None = None
              ) -> tuple[bytes, int]:
        """A one-time ticket ``(token, port)`` for a channel served by ``local``.

        ``on_bound(protocol)`` is called when the channel is established.
        Unused tickets expire after TICKET_LIFETIME seconds; at most
        MAX_TICKETS are outstanding (the oldest goes first).
        """
        now = time.monotonic()
        while self._tickets:
            oldest = next(iter(self._tickets.values()))
            if oldest[1] >= now and len(self._tickets) < MAX_TICKETS:
                break
            del self._tickets[next(iter(self._tickets))]
        token = secrets.token_bytes(32)
        self._tickets[_digest(token)] = (token, now + TICKET_LIFETIME, local, on_bound)
        return token, self.port

    def redeem(self, token: Any) -> tuple[Any, Callable | None] | None:
        """What a ticket opens, once; None for an unknown, spent or expired one."""
        if not isinstance(token, bytes):
            return None
        entry = self._tickets.get(_digest(token))
        if entry is None or not hmac.compare_digest(entry[0], token):
            return None
        del self._tickets[_digest(token)]
        _, expiry, local, on_bound = entry
        return (local, on_bound) if expiry >= time.monotonic() else None


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


# -- client side ---------------------------------------------------------------------


class _ClientProtocol(ChannelProtocol):
    expected_tub_id = ""
    token = b""

    def handshakeCompleted(self) -> None:
        cert = self._tls.getPeerCertificate()
        if cert is None or not hmac.compare_digest(tub_id_of(cert), self.expected_tub_id):
            self.log.warn("refused a channel: the server is not the controller the FURL names")
            self._tls.abortConnection()
            return
        self.sendString(safe_dumps((HELLO, self.token)))

    def frame(self, message: tuple) -> None:
        if message[0] == WELCOME and not self.ready.called:
            self.MAX_LENGTH = MAX_FRAME
            self.ready.callback(self)
        else:
            self._tls.abortConnection()


def open_channel(host: str, port: int, token: bytes, tub_id: str, local: Any = None,
                 timeout: float = 10.0) -> defer.Deferred:
    """Connect to a channel server; fires with the bound :class:`ChannelProtocol`.

    Fails with ChannelClosed when the server is not the one ``tub_id`` names
    or refuses the ticket, and with ``twisted.internet.defer.TimeoutError``
    (the connection abandoned) when it does not answer within ``timeout``
    seconds.
    """
    proto = _ClientProtocol()
    proto.expected_tub_id = tub_id
    proto.token = token
    if local is not None:
        proto.bind(local)

    # a ClientFactory (Twisted types forProtocol as returning a Factory), given its failure hook below
    factory: Any = protocol.ClientFactory.forProtocol(lambda: proto)

    def failed(connector: Any, reason: Failure) -> None:
        if not proto.ready.called:
            proto.ready.errback(Failure(ChannelClosed(f"could not open a channel: {reason.value}")))

    factory.clientConnectionFailed = failed
    reactor.connectSSL(host, port, factory, ssl.CertificateOptions(), timeout=timeout)
    return proto.ready.addTimeout(timeout, reactor)


def channel_address(furl: str) -> tuple[str, str]:
    """``(tub_id, host)`` of a FURL: whom to expect, and where to dial."""
    from foolscap.furl import decode_furl

    tub_id, hints, _ = decode_furl(furl)
    hint = hints[0]
    host = hint.rsplit(":", 1)[0]
    if host.startswith("tcp:"):
        host = host[4:]
    return tub_id, host.strip("[]")


# -- the engine's end: served synchronously by one thread ------------------------------


class BlockingChannel:
    """A channel end read and written by one thread with a blocking socket.

    An engine's main thread serves its command channel this way: it reads a
    request, runs it, writes the response, and reads the next one, with no
    reactor and no thread hand-off in between.  Same frames, same ticket,
    same certificate check and same constraint checks as
    :class:`ChannelProtocol`.
    """

    def __init__(self, sock: Any):
        self.sock = sock
        self._header = bytearray(4)

    @classmethod
    def open(cls, host: str, port: int, token: bytes, tub_id: str, timeout: float = 10.0
             ) -> BlockingChannel:
        """Connect, check the server is the one ``tub_id`` names, present ``token``.

        Raises ChannelClosed when any step fails.
        """
        import socket
        import ssl as stdlib_ssl

        from foolscap.base32 import encode as base32

        context = stdlib_ssl.SSLContext(stdlib_ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = stdlib_ssl.CERT_NONE  # we check the tub id ourselves
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ChannelClosed(f"could not open a channel: {exc}") from None
        try:
            tune_socket(raw)
            sock = context.wrap_socket(raw)
            der = sock.getpeercert(binary_form=True)
            if not der or not hmac.compare_digest(base32(hashlib.sha1(der).digest()), tub_id):
                raise ChannelClosed("the channel server is not the controller the FURL names")
            channel = cls(sock)
            channel._send(safe_dumps((HELLO, token)))
            if safe_loads(channel._recv()) != (WELCOME,):
                raise ChannelClosed("the controller did not accept the channel ticket")
        except (OSError, EOFError, pickle.UnpicklingError, ChannelClosed) as exc:
            raw.close()  # closes the TLS layer's socket too
            if isinstance(exc, ChannelClosed):
                raise
            raise ChannelClosed(f"could not open a channel: {exc}") from None
        sock.settimeout(None)
        return channel

    def _recv_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if not k:
                raise EOFError("the channel was closed")
            got += k
        return buf

    def _recv(self) -> bytes:
        (length,) = _LENGTH.unpack(self._recv_exact(4))
        if length > MAX_FRAME:
            raise EOFError(f"a frame of {length} bytes is too large")
        return bytes(self._recv_exact(length))

    def _send(self, frame: bytes) -> None:
        self.sock.sendall(_LENGTH.pack(len(frame)) + frame)

    def serve(self, local: Any, call: Callable[[str, tuple], Any]) -> None:
        """Answer requests with ``call(method, args)`` until the channel closes.

        Arguments are checked against ``local``'s RemoteInterface first; an
        exception becomes an error response.  Returns when the peer closes
        the channel or :meth:`close` is called (from any thread).
        """
        schema = local.getInterface()
        while True:
            try:
                message = safe_loads(self._recv())
            except (OSError, EOFError, ValueError):
                return
            except pickle.UnpicklingError:
                return  # a peer that sends classes is not our controller
            if not (isinstance(message, tuple) and len(message) == 4 and message[0] == REQUEST):
                return
            _, call_id, method, args = message
            try:
                try:
                    method_schema = schema[method]
                except KeyError:
                    raise Violation(f"no method {method!r} in {schema.__remote_name__}") from None
                method_schema.checkAllArgs(args, {}, True)
                response = (RESPONSE, call_id, True, call(method, args))
            except Exception as exc:
                response = (RESPONSE, call_id, False, f"{type(exc).__name__}: {exc} (in {method})")
            try:
                self._send(safe_dumps(response))
            except OSError:
                return

    def close(self) -> None:
        """Close the channel; a thread blocked in :meth:`serve` returns."""
        import socket

        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
