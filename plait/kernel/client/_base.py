"""What every asynchronous client shares: connecting, calling, decoding.

Asynchronous clients are written once, with methods that return Deferreds
and are marked :func:`asynchronous`; :mod:`plait.kernel.client._blocking`
derives the blocking clients from them.  A client class names the FURL
file it reads by default and the RemoteInterface it expects;
:meth:`AsyncClientBase.connect` does the rest, for every client.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from foolscap.api import DeadReferenceError, RemoteInterface
from twisted.internet import defer, reactor, threads
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from plait.kernel.client._pending import PendingResult
from plait.security import FURL_FILES, check_furl, client_tub, profile_dirs, read_furl
from plait.wire import bulk as _bulk
from plait.wire import tunnel as _tunnel
from plait.wire.channel import channel_address, open_channel
from plait.wire.errors import ChannelClosed, PlaitConnectionError, RemoteFailure
from plait.wire.serialize import deserialize, is_bulk

F = TypeVar("F", bound=Callable[..., Any])

#: Seconds to wait for a controller to answer a connection attempt.
CONNECT_TIMEOUT = 10.0
#: The remote methods that only ask: one that meets a link going down is made
#: again on a new link (any other fails, as the controller may have acted on it).
RETRY_SAFE = frozenset({"info", "get_ids", "wait_for_engines", "records", "result_status",
                        "history", "query_rows", "queue_status", "keys", "get_properties",
                        "has_properties"})
#: True once the process exits: a client whose link went fails at once then,
#: instead of connecting again (see ``_submit``'s exit hook).
EXITING = False

#: The failures of a call whose link to the controller went.
_LINK_GONE = (DeadReferenceError, ConnectionDone, ConnectionLost, ChannelClosed)

#: What connect's errors say when trying again cannot help.
_DEFINITE = ("not the one this FURL names", "does not know this FURL's secret",
             "wrong kind of FURL")
#: Seconds a client that lost its controller keeps trying to connect again while
#: nothing listens at its address (a controller being started again), at its next call.
RECONNECT_PATIENCE = 15.0


def asynchronous(fn: F) -> F:
    """Mark a client method as returning a Deferred (the blocking twin waits)."""
    fn._plait_asynchronous = True  # type: ignore[attr-defined]
    return fn


def counted(desc: str) -> Callable[[F], F]:
    """Mark an :func:`asynchronous` method that takes ``tally=`` (a
    :class:`~plait.kernel.client._progress.Tally` it keeps counting the tasks
    done in): its blocking twin takes ``progress=`` instead and shows a bar
    named ``desc`` (see :mod:`plait.kernel.client._progress`)."""

    def mark(fn: F) -> F:
        fn._plait_counted = desc  # type: ignore[attr-defined]
        return fn

    return mark


def resolve_furl(furl_or_file: str | Path | None, profile: str | None, default_name: str
                 ) -> tuple[str, str]:
    """``(furl, where it came from)`` for a FURL, a FURL file, or the profile's file."""
    if furl_or_file is None:
        path = profile_dirs(profile, create=False).furl_path(default_name)
        return read_furl(path), str(path)
    text = str(furl_or_file)
    if text.startswith("pb://"):
        return check_furl(text.strip(), "the FURL given"), "the FURL given"
    return read_furl(Path(text).expanduser()), text


def connect(furl: str, source: str, expected: type[RemoteInterface] | None = None,
            who: str = "this client") -> defer.Deferred:
    """A Deferred firing with ``(reference, channel or None)``.

    The reference is foolscap's; when the interface it names offers a
    channel (``open_channel``, see :mod:`plait.wire.channel`), calls travel
    on it instead.  Fails with PlaitConnectionError saying why, naming
    ``source``: nothing listening, a controller that is not the one the FURL
    names, a secret it does not know, or (``expected``) a FURL of another
    interface than the one ``who`` needs.
    """
    location = furl.split("@", 1)[-1].split("/", 1)[0]
    d = client_tub().getReference(_tunnel.route_furl(furl))
    d.addTimeout(CONNECT_TIMEOUT, reactor)
    if expected is not None:
        d.addCallback(_check_kind, expected, source, who)
    d.addCallback(_with_channel, furl)

    def failed(f: Failure) -> None:
        if f.check(PlaitConnectionError):
            f.raiseException()
        text = str(f.value)
        if f.check(defer.TimeoutError):
            why = f"no answer within {CONNECT_TIMEOUT:g} s"
        elif "unknown TubID" in text:
            why = ("a controller answers there, but not the one this FURL names (its tub id "
                   "is unknown there): the FURL is of another controller, or another one "
                   "took over its address")
        elif "unable to find reference" in text or "KeyError" in text:
            why = ("the controller does not know this FURL's secret: the FURL is stale (a "
                   "controller started with --new-furls makes new ones) or belongs to "
                   "another profile")
        elif "refused" in text.lower():
            why = "nothing listens there: is the controller running?" + _last_words(source)
        else:
            why = text
        raise PlaitConnectionError(
            f"could not connect to the controller at {location} using {source}: {why}"
        )

    return d.addErrback(failed)


def _link_went(exc: BaseException) -> bool:
    """Whether ``exc`` says a link was lost during a call (not that the far end refused)."""
    return isinstance(exc, _LINK_GONE) or (
        isinstance(exc, PlaitConnectionError) and "during this call" in str(exc))


def _last_words(source: str) -> str:
    """For a FURL file of a profile's security folder: which profile, and the end of
    the newest controller log there (why a controller went away, often)."""
    folder = Path(source).parent
    if folder.name != "security" or not folder.parent.name.startswith("profile_"):
        return ""
    profile = folder.parent.name[len("profile_"):]
    logs = sorted((folder.parent / "log").glob("ipcontroller-*.log"),
                  key=lambda log: log.stat().st_mtime)
    if not logs:
        return f" (profile '{profile}': no controller log there)"
    try:
        tail = logs[-1].read_text(errors="replace").strip().splitlines()[-3:]
    except OSError:
        tail = []
    said = ("; it ends with:\n    " + "\n    ".join(tail)) if tail else ""
    return f" (profile '{profile}'; the last controller's log is {logs[-1]}{said})"


def _check_kind(ref: Any, expected: type[RemoteInterface], source: str, who: str) -> Any:
    """``ref`` if it offers ``expected``; PlaitConnectionError naming both kinds if not."""
    got = getattr(getattr(ref, "tracker", None), "interfaceName", None)
    wanted = expected.__remote_name__
    if got == wanted:
        return ref

    def kind(name: str | None) -> str:
        if name in FURL_FILES:
            return f"{name} (the FURL of {FURL_FILES[name]})"
        return f"{name or 'no known interface'}"

    raise PlaitConnectionError(f"{source} is the wrong kind of FURL for {who}: it names "
                               f"{kind(got)}, and {who} needs {kind(wanted)}")


@defer.inlineCallbacks
def _with_channel(ref: Any, furl: str) -> Any:
    if "open_channel" not in _method_names(ref):
        return ref, None
    try:
        token, port = yield ref.callRemote("open_channel")
        tub_id, host = channel_address(furl)
        if _tunnel.routed(host):  # ssh forwards the port: not in the reactor thread
            host, port = yield threads.deferToThread(_tunnel.route, host, port)
        channel = yield open_channel(host, port, token, tub_id)
    except Exception:
        return ref, None  # foolscap alone still works
    return ref, channel


def _method_names(ref: Any) -> set[str]:
    """The remote methods of the interface ``ref``'s object names (none when this
    process does not know that interface)."""
    schema = getattr(ref, "tracker", None) and ref.tracker.interface
    return set(schema.names()) if schema is not None else set()


def raise_outcome(outcome: tuple[bool, Any]) -> Any:
    """The value of an ``(ok, value)`` outcome; raise the remote error otherwise."""
    ok, value = outcome
    if ok:
        return value
    info = deserialize(value)
    raise info.exception() if isinstance(info, RemoteFailure) else RuntimeError(info)


def decode(payload: bytes) -> Any:
    """A Deferred (or value) with the object a payload carries."""
    if is_bulk(payload):
        return threads.deferToThread(_bulk.fetch, payload)
    return deserialize(payload)


def decode_replies(per_engine: list[tuple[int, bool, bytes]]) -> defer.Deferred:
    """Decode ``[(id, ok, payload)]`` into ``[(id, ok, value-or-RemoteFailure)]``."""
    def tagged(value: Any, engine_id: int, ok: bool) -> tuple[int, bool, Any]:
        return engine_id, ok, value

    ds = []
    for engine_id, ok, payload in per_engine:
        d = defer.maybeDeferred(decode, payload)
        d.addCallback(tagged, engine_id, ok)
        ds.append(d)
    return all_of(ds)


def all_of(ds: list[defer.Deferred]) -> defer.Deferred:
    """A Deferred with the list of results of ``ds``; fails with the first failure
    (itself, not wrapped in a FirstError)."""
    d = defer.gatherResults(ds, consumeErrors=True)
    return d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)


class AsyncClientBase:
    """A connection to one controller interface.

    Subclasses name the FURL file they read by default (``furl_name``) and
    the RemoteInterface they speak (``remote_interface``: naming it also
    makes foolscap know it, so that the reference says which methods its
    object offers, a channel among them), and call :meth:`_call`
    with the remote method name, its arguments and a ``finish`` function
    turning the wire value into the user's result.
    """

    furl_name: ClassVar[str]
    remote_interface: ClassVar[type[RemoteInterface]]
    #: What users call this client, in errors (default: the class name, without "Async").
    user_name: ClassVar[str | None] = None

    @classmethod
    def client_name(cls) -> str:
        return f"a {cls.user_name or cls.__name__.removeprefix('Async')}"

    def __init__(self, link: tuple[Any, Any], source: str = ""):
        self._tunnelled: str | None = None  # the FURL reached through an SSH tunnel, if any
        self._source = source
        self._furl: str | None = None  # what to connect to again (set by connect)
        self._reconnect_waiters: list[defer.Deferred] = []
        self._rejoining = False
        self._adopt(link)

    # -- the link, and connecting again ------------------------------------------------
    def _adopt(self, link: tuple[Any, Any]) -> None:
        """Use ``link`` (``(reference, channel or None)``), and notice when it goes."""
        reference, channel = link
        self._reference = reference  # foolscap: kept open, it is our capability
        self._remote = channel or reference
        self._down = False
        for end in {id(e): e for e in (reference, self._remote)}.values():
            if hasattr(end, "notifyOnDisconnect"):
                end.notifyOnDisconnect(self._link_lost, end)

    def _link_lost(self, end: Any) -> None:
        if end is self._reference or end is self._remote:  # (not an earlier link's)
            if not self._down:
                self._down = True
                self._connection_lost()

    def _connection_lost(self) -> None:
        """(Subclasses) the link to the controller went: it stopped, restarted, or the
        network failed.  The next call connects again (:meth:`_reconnect`)."""

    def _reconnect(self) -> defer.Deferred:
        """Connect to the controller again (one attempt, shared by the calls that
        wait for it); fires with None, or fails with PlaitConnectionError saying why."""
        waiter: defer.Deferred = defer.Deferred()
        self._reconnect_waiters.append(waiter)
        if len(self._reconnect_waiters) > 1:
            return waiter  # an attempt is under way
        self._link_lost(self._remote)  # (if its loss was not heard of yet)

        def failed(f: Failure) -> None:
            if f.check(PlaitConnectionError) and "could not connect again" in str(f.value):
                f.raiseException()
            why = str(f.value).removeprefix("could not connect to the controller ")
            raise PlaitConnectionError(
                f"lost the connection to the controller ({self._source}), and could "
                f"not connect again: {why}")

        def done(result: Any) -> None:
            waiters, self._reconnect_waiters = self._reconnect_waiters, []
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(None)

        self._connect_and_rejoin().addErrback(failed).addBoth(done)
        return waiter

    @defer.inlineCallbacks
    def _connect_and_rejoin(self) -> Any:
        """Connect again and set the new link up (:meth:`_rejoined`).  A link lost
        while it is being set up (the controller died again at once) is dropped,
        and the next one tried, for :data:`RECONNECT_PATIENCE` seconds; the calls
        of the setting up fail at once on a lost link (they do not wait for the
        attempt they are part of)."""
        deadline = reactor.seconds() + RECONNECT_PATIENCE
        while True:
            link = yield self._connect_patiently()
            self._adopt(link)
            self._rejoining = True  # (its own calls go straight to the new link)
            try:
                yield self._rejoined()
                return None
            except Exception as exc:
                self._down = True  # the new link is of no use: drop it
                if hasattr(self._remote, "close"):
                    self._remote.close()
                if not _link_went(exc) or reactor.seconds() >= deadline:
                    raise
            finally:
                self._rejoining = False

    @defer.inlineCallbacks
    def _connect_patiently(self) -> Any:
        """:func:`connect` to the FURL again; while nothing listens there (a
        controller that is being started again), or the attempt meets the old
        connection going, try again for :data:`RECONNECT_PATIENCE` seconds.  A
        definite no (another controller answers, a secret it does not know, a
        FURL of another kind) ends the attempts at once."""
        assert self._furl is not None
        deadline = reactor.seconds() + RECONNECT_PATIENCE
        pause = 0.05
        while True:
            try:
                link = yield connect(self._furl, self._source, self.remote_interface,
                                     self.client_name())
                return link
            except PlaitConnectionError as exc:
                definite = any(no in str(exc) for no in _DEFINITE)
                if definite or reactor.seconds() >= deadline:
                    raise
            yield deferLater(reactor, pause, lambda: None)
            pause = min(pause * 2, 0.5)

    def _rejoined(self) -> Any:
        """(Subclasses) connected again: set up what the new link needs (a Deferred
        or None).  A controller started again keeps its FURLs, so the same FURL
        reaches it."""
        return None

    @classmethod
    def connect(cls, furl_or_file: str | Path | None = None, profile: str | None = None,
                sshserver: str | None = None, sshkey: str | None = None) -> defer.Deferred:
        """A Deferred firing with a client connected to the controller.

        With no argument, the client's FURL file in the security folder of
        ``profile`` (default 'default') is used; else ``furl_or_file`` is a
        FURL or the path of a FURL file.  With ``sshserver`` (``'user@host'``;
        ``sshkey`` an identity file), every connection to the controller goes
        through an SSH tunnel to that server (see :mod:`plait.wire.tunnel`).
        Fails with PlaitConnectionError when the controller (or the SSH
        server) cannot be reached or refuses the FURL, and with OSError /
        ValueError when the FURL file cannot be read.
        """
        try:
            furl, source = resolve_furl(furl_or_file, profile, cls.furl_name)
        except Exception:
            return defer.fail()
        routed: list[str] = []
        if sshserver:
            def tunnelled() -> None:  # (the route is released when this client closes,
                _tunnel.use_tunnel(furl, _tunnel.tunnel_to(sshserver, sshkey))  # or if
                routed.append(furl)  # connecting fails)

            d: defer.Deferred = threads.deferToThread(tunnelled)  # ssh blocks: not here
            d.addCallback(lambda _: connect(furl, source, cls.remote_interface,
                                            cls.client_name()))
        else:
            d = connect(furl, source, cls.remote_interface, cls.client_name())

        def made(link: Any) -> Any:
            client = cls(link, source)
            client._furl = furl
            client._tunnelled = furl if sshserver else None
            return client._started()

        def unrouted(f: Failure) -> Failure:
            if routed:
                _tunnel.release(furl)
            return f

        return d.addCallbacks(made, unrouted)

    def _started(self) -> Any:
        """The client is connected: the result of :meth:`connect` (or a
        Deferred of it).  Subclasses with more to set up extend it."""
        return self

    def _lost(self, f: Failure) -> Failure:
        if f.check(*_LINK_GONE):
            raise PlaitConnectionError(
                f"lost the connection to the controller ({self._source}) during this "
                f"call: the controller stopped or restarted, or the network failed (the "
                f"next call connects again)"
            )
        return f

    def _remote_call(self, method: str, *args: Any) -> defer.Deferred:
        """Call ``method`` on the controller; when the link went since the last
        call, connect again first (fails with PlaitConnectionError if that fails).
        A call that only asks (:data:`RETRY_SAFE`) and meets a link that is
        going is made again once, on a new link."""
        # (while connecting again, a call waits for that: the new link has no session
        # yet; the calls setting the new link up go to it, lost or not)
        if (self._down or self._reconnect_waiters) and not self._rejoining \
                and self._furl is not None and not EXITING:
            d = self._reconnect()
            d.addCallback(lambda _: self._remote.callRemote(method, *args))
        else:
            link = self._remote
            try:
                d = link.callRemote(method, *args)
            except Exception:
                d = defer.fail()
            if method in RETRY_SAFE and self._furl is not None:
                d.addErrback(self._again_after_loss, method, args, link)
        return d.addErrback(self._lost)

    def _again_after_loss(self, f: Failure, method: str, args: tuple, link: Any) -> Any:
        if not f.check(*_LINK_GONE) or self._rejoining:
            return f  # (setting a new link up: that attempt tries the next one)
        if link is not self._remote and not self._down and not self._reconnect_waiters:
            # (the news of an old link's loss came after a new link was made: ask there)
            return self._remote.callRemote(method, *args)
        return self._reconnect().addCallback(lambda _: self._remote.callRemote(method, *args))

    def _call(self, method: str, *args: Any, block: bool | None = None,
              finish: Callable[[Any], Any] | None = None, description: str = ""
              ) -> defer.Deferred:
        """Call ``method(*args[, block])`` and finish its value.

        With ``block`` False, fire with a :class:`PendingResult` instead.
        """
        finish = finish or (lambda v: v)
        call_args = args if block is None else (*args, bool(block))
        d = self._remote_call(method, *call_args).addCallback(raise_outcome)
        if block is None or block:
            return d.addCallback(finish)
        return d.addCallback(self._pending, finish, description or method)

    def _pending(self, result_id: int, finish: Callable[[Any], Any], description: str
                 ) -> PendingResult:
        def fetch(block: bool) -> defer.Deferred:
            d = self._remote_call("get_pending_result", result_id, block)
            return d.addCallback(raise_outcome).addCallback(finish)

        return PendingResult(fetch, result_id, description)
