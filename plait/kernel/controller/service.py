"""The controller: a Twisted service tree of plait's kernel services.

``ControllerService`` owns the engine registry (with a queue per engine),
the result store, the MultiEngine and Task services and the bulk data
server.  It starts two foolscap Tubs, each with a certificate kept in the
security folder: the *engine* Tub serves the engine FURL, the *client* Tub
the client FURLs.  What each FURL grants is decided by
:mod:`plait.adapters`.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet import reactor as _twisted_reactor
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer
from zope.interface.interface import InterfaceClass

from plait.adapters import Publication, default_publications
from plait.kernel.controller.blobserver import BlobServer
from plait.kernel.controller.enrollment import Enrollment
from plait.kernel.controller.hub import Hub
from plait.kernel.controller.hubstore import open_store
from plait.kernel.controller.multiengine import MultiEngine
from plait.kernel.controller.parallel import ParallelService
from plait.kernel.controller.registry import EngineRegistry
from plait.kernel.controller.restore import Restorer
from plait.kernel.controller.task import TaskController
from plait.kernel.controller.taskids import IdHorizon
from plait.security import (
    ProfileDirs,
    enrollment_key,
    load_or_create_certificate,
    make_tub,
    write_private,
)
from plait.wire.channel import ChannelServer

reactor: Any = _twisted_reactor  # provides every IReactor* interface; typed by Twisted as a bare protocol

#: The file of the profile's db folder where the controller writes the ports
#: it listens on; a controller started again without ports takes them again.
PORTS_FILE = "ports.json"
#: The status page's URL, token included (in the security folder: private).
STATUS_URL_FILE = "ipcontroller-status.url"

#: The file of the profile's db folder that records the enrollment secrets used,
#: and the member keys of engines (see .enrollment).
ENROLLMENT_FILE = "enrollment.json"
#: The file of the profile's db folder that holds the next engine id, and the ids
#: registered (see EngineRegistry).
ENGINE_IDS_FILE = "engineids"

log = Logger()

#: Seconds after it is ready at which a controller starts its status page (what
#: the page shows is counted from the start): the engines and the client started
#: with it join meanwhile, without waiting on twisted.web's import.
AFTER_STARTUP = 0.5

#: Seconds an unread blob is kept when nothing released it (a client went away).
BLOB_LIFETIME = 24 * 3600


@implementer(IStreamServerEndpoint)
class _BoundEndpoint:
    """A server endpoint over a socket we bound ourselves (so port 0 works)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def listen(self, factory: Any) -> defer.Deferred:
        port = reactor.adoptStreamPort(self.sock.fileno(), self.sock.family, factory)
        self.sock.close()  # Twisted holds its own duplicate of the descriptor
        return defer.succeed(port)


def _bind(ip: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((ip, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {ip}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _recorded_ports(dirs: ProfileDirs) -> dict[str, int]:
    """The ports the profile's last controller listened on (none when unknown)."""
    try:
        recorded = json.loads((dirs.db / PORTS_FILE).read_text())
        return {str(k): int(v) for k, v in recorded.items() if 0 < int(v) < 65536}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _bind_again(ip: str, asked: int, recorded: int | None, what: str) -> socket.socket:
    """A socket on port ``asked``; with none asked, on the port of the last run
    (``recorded``), so that FURLs handed out stay valid; on a random one when
    that port is taken now (the FURL files then change, which the log says)."""
    if asked or not recorded:
        return _bind(ip, asked)
    try:
        return _bind(ip, recorded)
    except OSError as exc:
        log.warn("the {what} port of the last run, {port}, is taken now ({e}): the "
                 "controller listens on another one, and its FURL files change (engines "
                 "and clients of the last run must read them again)",
                 what=what, port=recorded, e=exc.strerror)
        return _bind(ip, 0)


def _prefix(dirs: ProfileDirs) -> int:
    """The 64-bit number naming this profile's controller in message ids; made
    once and kept, so that ids stay valid across restarts."""
    path = dirs.db / "msg-id-prefix"
    try:
        return int(path.read_text().strip(), 16)
    except (OSError, ValueError):
        prefix = secrets.randbits(64)
        write_private(path, f"{prefix:016x}\n")
        return prefix


def _swissnum_from(furl_path: Path, tub_id: str) -> str | None:
    """The secret of an existing FURL file written by the same tub, if any."""
    try:
        furl = furl_path.read_text().strip()
    except OSError:
        return None
    if not furl.startswith(f"pb://{tub_id}@") or "/" not in furl[5:]:
        return None
    return furl.rsplit("/", 1)[1] or None


class ControllerService(service.MultiService):
    """The controller of one plait cluster.

    After :meth:`startService`, :attr:`ready` fires with a dict of the FURL
    file paths written.
    """

    log = Logger()

    def __init__(
        self,
        dirs: ProfileDirs,
        ip: str = "127.0.0.1",
        location: str | None = None,
        client_port: int = 0,
        engine_port: int = 0,
        scheme: str | None = None,
        *,
        client_channel_port: int = 0,
        engine_channel_port: int = 0,
        data_port: int = 0,
        hwm: int | None = None,
        publications: list[Publication] | None = None,
        engine_timeout: int = 30,
        new_furls: bool = False,
        db: str = "sqlite",
        restore: bool = False,
        status_port: int | None = 0,
        status_ip: str = "127.0.0.1",
        enroll: bool = False,
    ):
        super().__init__()
        #: The status page's port (0: a free one; None: no page), and once serving, its URL.
        self.status_port = status_port
        self.status_ip = status_ip  # loopback unless told: the page is plain HTTP
        self.status_url: str | None = None
        self.status: Any = None  # the StatusService, once the page serves
        self._status_socket: socket.socket | None = None  # bound, until the page serves
        self._status_early: Any = None  # the StatusService counting, until the page serves
        self._status_bound: int | None = None  # its port
        self._status_listener: Any = None
        self.dirs = dirs
        self.ip = ip
        self.location = location or ip
        self.ports = {"client": client_port, "engine": engine_port}
        # 0: a random free port; fix them all to open a firewall for exactly these
        self.channel_ports = {"client": client_channel_port, "engine": engine_channel_port}
        self.publications = publications or default_publications()
        self.new_furls = new_furls  # False: keep the secrets of existing FURL files
        # Keepalives let the controller notice an engine whose host vanished; a
        # killed engine is noticed at once, as its connection closes.
        # (foolscap counts both in whole seconds; ipcontroller asks for >= 3)
        self.engine_tub_options = {
            "keepaliveTimeout": max(engine_timeout // 3, 1),
            "disconnectTimeout": max(engine_timeout, 3),
        }
        # the key is made in any case: 'ipcluster enroll' may issue secrets for later
        key = enrollment_key(dirs)
        #: (``enroll``) only engines showing an enrollment secret are admitted
        self.enrollment = Enrollment(key, dirs.db / ENROLLMENT_FILE) if enroll else None
        self.registry = EngineRegistry(ids_path=dirs.db / ENGINE_IDS_FILE, restore=restore,
                                       enrollment=self.enrollment)
        self.restore = restore  # take back the queue of the last run (see .restore)
        # Blobs live until read, or until the command or result holding them
        # is dropped (BlobServer.release_payload); expiry only reclaims the
        # ones a vanished client never fetched.
        keep = dirs.db / "blobs"  # large results the hub keeps
        if db != "sqlite":  # records of an earlier run are gone: so are their results
            shutil.rmtree(keep, ignore_errors=True)
        self.blobs = BlobServer(ip, advertised_host=self.location, expire_after=BLOB_LIFETIME,
                                keep_dir=str(keep) if db != "none" else None, port=data_port)
        self.multiengine = MultiEngine(
            self.registry, stop_controller=self.stop_controller, release=self.blobs.release_payload
        )
        self.results = self.multiengine.results
        self.db = db
        self.hub = Hub(open_store(db, dirs.db / "hub.sqlite3" if db == "sqlite" else None,
                                  load_queued=restore),
                       _prefix(dirs), self.blobs)
        self.task = self._make_task_service(scheme, hwm)
        self.parallel = ParallelService(self.task, self.registry, self.hub, self.multiengine, db)
        self.tubs: dict[str, Any] = {}
        self.channels: dict[str, ChannelServer] = {}
        self.furls: dict[str, str] = {}
        self.ready: defer.Deferred = defer.Deferred()

    def _make_task_service(self, scheme: str | None, hwm: int | None) -> TaskController:
        kwargs: dict[str, Any] = {}
        if scheme is not None:
            kwargs["scheme"] = scheme
        if hwm is not None:
            kwargs["hwm"] = hwm
        return TaskController(self.registry, hub=self.hub,
                              horizon=IdHorizon(self.dirs.db / "taskids"), **kwargs)

    def service_for(self, interface: InterfaceClass) -> Any:
        """The service of this controller that provides ``interface``."""
        for candidate in (self.registry, self.multiengine, self.task, self.parallel):
            if interface.providedBy(candidate):
                return candidate
        raise LookupError(f"this controller has no service providing {interface.__name__}")

    def startService(self) -> None:
        super().startService()
        self.dirs.controller_stopped.unlink(missing_ok=True)
        self.blobs.start()
        if self.restore:  # before anyone connects: a client asks for them at once
            Restorer(self.hub, self.task, self.registry).restore()
        recorded = _recorded_ports(self.dirs)
        for name in ("engine", "client"):
            cert = load_or_create_certificate(self.dirs.security / f"ipcontroller-{name}.pem")
            options = self.engine_tub_options if name == "engine" else {}
            tub = make_tub(cert, **options)
            sock = _bind_again(self.ip, self.ports[name], recorded.get(name), name)
            port = sock.getsockname()[1]
            tub.listenOn(_BoundEndpoint(sock))
            tub.setLocation(f"{self.location}:{port}")
            tub.setServiceParent(self)
            self.tubs[name] = tub
            self.channels[name] = ChannelServer(cert, self.ip, self.channel_ports[name])
            self.channels[name].start()
            self.channel_ports[name] = self.channels[name].port
            self.ports[name] = port
        for pub in self.publications:
            self._publish(pub)
        if self.status_port is not None:
            self._serve_status()
        write_private(self.dirs.db / PORTS_FILE, json.dumps(self.all_ports()) + "\n")
        if not self.restore:  # what an earlier run left queued is not ours
            self.hub.store.clear_queued()
        self.log.info("controller listening on {ip}: {ports}", ip=self.ip,
                      ports=self.describe_ports())
        self.ready.callback(dict(self.furls))

    def _serve_status(self) -> None:
        """The status page (see :mod:`plait.adapters.web`), on ``status_ip``
        (loopback by default), behind a token made now; its URL in the security
        folder.  A controller started again takes the port it had.

        The port is bound now, with the others, and what the page shows is
        counted from now (:class:`StatusService`); the page itself (twisted.web,
        imported then: some 40 ms) starts :data:`AFTER_STARTUP` seconds later,
        while the engines started with the controller join (they would wait for
        it); a request meanwhile waits in the listen queue."""
        from plait.kernel.controller.status import StatusService

        token = secrets.token_urlsafe(24)
        recorded = None if self.status_port else _recorded_ports(self.dirs).get("status")
        sock = _bind_again(self.status_ip, self.status_port or 0, recorded, "status")
        self._status_socket = sock
        port = self._status_bound = sock.getsockname()[1]
        host = f"[{self.status_ip}]" if ":" in self.status_ip else self.status_ip
        self.status_url = f"http://{host}:{port}/?token={token}"
        write_private(self.dirs.security / STATUS_URL_FILE, self.status_url + "\n")
        self.parallel.dashboard_url = self.status_url
        self._status_early = StatusService(self.registry, self.task, hub=self.hub)
        reactor.callLater(AFTER_STARTUP, self._start_status_page, token)

    def _start_status_page(self, token: str) -> None:
        """Serve the page on the socket bound at start.  A page that cannot start
        (twisted.web broken, say) costs nothing else: the controller runs on, the
        log says why, the socket is closed (a browser is refused at once rather
        than left waiting) and its URL is withdrawn from the file and clients."""
        sock, self._status_socket = self._status_socket, None
        status, self._status_early = self._status_early, None
        if sock is None or status is None or not self.running:
            return
        try:
            from plait.adapters.web import site

            listener = reactor.adoptStreamPort(sock.fileno(), sock.family,
                                               site(status, token))
        except Exception as exc:
            sock.close()
            status.detach()
            self._withdraw_status_url()
            self.log.failure("the status page could not start ({error}); the controller "
                             "runs without it", error=f"{type(exc).__name__}: {exc}")
            return
        sock.close()  # (the reactor has its own copy)
        self.status, self._status_listener = status, listener
        status.start()

    def _withdraw_status_url(self) -> None:
        self.status_url = self.parallel.dashboard_url = None
        self._status_bound = None
        try:
            (self.dirs.security / STATUS_URL_FILE).unlink()
        except FileNotFoundError:
            pass

    def all_ports(self) -> dict[str, int]:
        """Every port the controller listens on, by what it is for (once started)."""
        ports = {"client": self.ports["client"], "engine": self.ports["engine"],
                 "client channel": self.channel_ports["client"],
                 "engine channel": self.channel_ports["engine"], "data": self.blobs.address[1]}
        if self._status_bound is not None:
            ports["status"] = self._status_bound
        return ports

    def describe_ports(self) -> str:
        return ", ".join(f"{name} port {port}" for name, port in self.all_ports().items())

    def _publish(self, pub: Publication) -> None:
        tub = self.tubs[pub.listener]
        path = self.dirs.furl_path(pub.furl_name)
        kept = None if self.new_furls else _swissnum_from(path, tub.getTubID())
        name = kept or base64.b32encode(
            secrets.token_bytes(20)
        ).decode().lower()
        referenceable = pub.adapter(self.service_for(pub.service), self)
        furl = tub.registerReference(referenceable, name=name)
        write_private(path, furl + "\n")
        self.furls[pub.furl_name] = str(path)

    def stopService(self) -> defer.Deferred:
        # a controller that stops cleanly (SIGTERM, shutdown, kill(controller=True))
        # says so: the cluster's keeper starts again only one that died
        try:
            write_private(self.dirs.controller_stopped, "stopped\n")
        except OSError:
            pass
        self.hub.store.clear_queued()  # stopped cleanly: nothing to take back
        self.blobs.stop()
        if self._status_socket is not None:  # (stopped before the page started)
            self._status_socket.close()
            self._status_socket = None
        if self._status_early is not None:
            self._status_early.detach()
            self._status_early = None
        if self._status_listener is not None:
            self.status.stop()
            self._status_listener.stopListening()
        for channels in self.channels.values():
            channels.stop()
        d = defer.maybeDeferred(super().stopService)
        return d.addBoth(lambda result: self.hub.store.close().addBoth(lambda _: result))

    def stop_controller(self) -> None:
        """Stop the whole controller process soon (``kill(controller=True)``)."""
        reactor.callLater(0.05, reactor.stop)
