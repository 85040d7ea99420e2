"""The engine process: a Twisted client of the controller that runs user code.

User code runs in the process's main thread (so that signals, matplotlib and
friends behave as in a normal script); the reactor runs in a background
thread, where it keeps answering the controller's keepalives however long
user code runs.

Commands arrive one of two ways, and both end in :meth:`Engine.call`, which
runs them in the main thread (:class:`~plait.kernel.engine.commands.Commands`):

* on the engine's command channel (:class:`~plait.wire.channel.BlockingChannel`),
  which the main thread itself serves: read a request, run it, answer;
* through foolscap (an engine started with ``--no-channel``, or whose
  channel could not be opened): :class:`~plait.adapters.engine_server.FoolscapEngine`
  receives them in the reactor thread and :class:`MainThreadExecutor` hands
  them to the main thread, one at a time, in order.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import sys
import threading
import time
import uuid as uuid_module
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet import reactor as _twisted_reactor
from twisted.internet.task import LoopingCall
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from zope.interface import implementer

from plait.adapters.engine_server import FoolscapEngine
from plait.interfaces.engine import IEngineServer, RIEngineRegistrar
from plait.kernel.engine import taskrun
from plait.kernel.engine.commands import Commands, Reply
from plait.kernel.engine.interpreter import Interpreter
from plait.kernel.engine.interrupts import interrupts
from plait.security import make_tub
from plait.wire.channel import BlockingChannel, channel_address
from plait.wire.enrollment import new_member
from plait.wire.errors import ChannelClosed, EnrollmentRefused, PlaitConnectionError
from plait.wire.serialize import INLINE_LIMIT, dumps_plain
from plait.wire.tunnel import route, route_furl

#: Seconds between two looks at an engine's memory, when it has a limit.
MEMORY_CHECK_EVERY = 0.1

reactor: Any = _twisted_reactor  # provides every IReactor* interface; typed by Twisted as a bare protocol

#: Seconds between two attempts, at most, of an engine joining its controller again.
REJOIN_EVERY = 1.0

#: Seconds an engine waits for its controller to accept it.
REGISTRATION_TIMEOUT = 60

log = Logger()

_T = TypeVar("_T")


def _wait_for(fn: Callable[..., defer.Deferred[_T]], *args: Any) -> _T:
    """(main thread) Run ``fn(*args)`` in the reactor thread and wait for its Deferred.

    Plain ``blockingCallFromThread``, with the result type stated: Twisted's
    annotation of it does not let mypy infer a Deferred's result type.
    """
    call: Callable[..., Any] = fn
    return blockingCallFromThread(reactor, call, *args)


class MainThreadExecutor:
    """Runs callables in the thread that calls :meth:`run_forever`.

    :meth:`submit` may be called from the reactor thread; it returns a
    Deferred that fires (in the reactor thread) with the callable's result.
    The callable must not raise: engine handlers return replies.
    """

    _STOP = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._queue.put((fn, args, d))
        return d

    def stop(self) -> None:
        self._queue.put(self._STOP)

    def run_forever(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            fn, args, d = item
            try:
                result = fn(*args)
            except BaseException as exc:  # a handler bug; keep the engine alive
                reactor.callFromThread(d.errback, exc)
                continue
            reactor.callFromThread(d.callback, result)


@implementer(IEngineServer)
class Engine:
    """One engine: connects, registers, serves commands until told to stop."""

    def __init__(self, furl: str, properties: dict | None = None,
                 on_registered: Callable[[int], None] | None = None, channel: bool = True,
                 reconnect: float = 0.0, engine_id: int | None = None,
                 memory_limit: int | None = None, secret: str | None = None,
                 member: bytes | None = None):
        self.furl = furl
        #: the one-time enrollment secret shown at the first registration (see
        #: plait.wire.enrollment), and the member key shown at every one
        self.secret = secret
        self.member = member or new_member()
        #: bytes of resident memory past which the engine exits, saying why
        self.memory_limit = memory_limit
        #: the id to take over at the first registration: a restarted engine's
        self.claim_id = engine_id
        #: seconds an engine that lost its controller keeps trying to join it again,
        #: with its namespace (0: it exits at once)
        self.reconnect = reconnect
        self.lost = False  # the controller went away; a reconnect may follow
        self.uuid = str(uuid_module.uuid4())
        self.interpreter = Interpreter(properties=properties)
        self.commands = Commands(self.interpreter, self._open_upload, self._properties_changed)
        self.executor = MainThreadExecutor()
        # the output of later-generation tasks, streamed while they run
        taskrun.output_sink = OutputStreamer(lambda: self.session).write
        self.remote_self = FoolscapEngine(self)
        self.registrar: Any = None
        self._joins = 0  # connections to the controller made so far
        self._unreported: list = []  # tasks finished, to tell the controller joined again
        self._lost_at: float | None = None  # (time.monotonic) when the controller was lost
        self._join_timeout: float = REGISTRATION_TIMEOUT  # seconds each step of joining may take
        self.tub: Any = None
        self.session: Any = None  # this engine's RIEngineSession, once registered
        self.channel: Any = None
        self.id: int | None = None
        self.on_registered = on_registered
        self.want_channel = channel
        self.exit_code = 0
        self.stopping = False
        self.error: str | None = None
        self.refused = False  # the controller refused its credentials
        self._usage_loop = LoopingCall(self._report_usage)
        self._watching = False  # the usage reports (and memory watch) started

    # -- reactor thread -----------------------------------------------------
    @defer.inlineCallbacks
    def _join(self) -> Any:
        """Reach the registrar and get a channel ticket (``None``: no channel)."""
        # An engine's own Tub probes a silent controller and gives up on it
        # after a minute, so that an engine whose controller's host vanished
        # exits instead of waiting for ever.  An engine that reconnects probes
        # more often: a network back after a cut is then noticed in seconds.
        if self.tub is not None:
            self.tub.stopService()
        if self.reconnect:
            self.tub = make_tub(keepaliveTimeout=2, disconnectTimeout=10)
        else:
            self.tub = make_tub(keepaliveTimeout=15, disconnectTimeout=60)
        self.tub.startService()
        d = self.tub.getReference(route_furl(self.furl))
        self.registrar = yield d.addTimeout(self._join_timeout, reactor)
        kind = getattr(self.registrar.tracker, "interfaceName", None)
        if kind != RIEngineRegistrar.__remote_name__:
            raise ValueError(f"the FURL is the wrong kind for an engine: it names {kind}, "
                             f"not {RIEngineRegistrar.__remote_name__} (the FURL of "
                             f"ipcontroller-engine.furl)")
        self._joins += 1  # a late notice of an earlier connection's loss is ignored
        self.registrar.notifyOnDisconnect(self._controller_lost, self._joins)
        if not self.want_channel:
            return None
        try:
            ticket = yield self.registrar.callRemote("open_channel")
        except Exception as exc:
            log.warn("no command channel ({e}); commands will travel on foolscap", e=exc)
            ticket = None
        return ticket

    def _register(self, token: bytes) -> defer.Deferred[int]:
        # until it registered, a restarted engine's claim; joining again, its own id
        wanted = self.claim_id if self.id is None else self.id
        claim: dict[str, Any] = {} if wanted is None else {"engine_id": wanted}
        claim["member"] = self.member
        if self.secret:
            claim["secret"] = self.secret.encode()
        if self.id is not None:  # (joining again: it was registered)
            claim["rejoin"] = True
            # what it finished last: the replies may have died with the controller
            self._unreported.extend(taskrun.recent_replies(self._lost_at))
            report = self._unreported
            while report:  # (the oldest go first: the report must fit the call)
                data = dumps_plain(report, "the tasks it finished")
                if len(data) <= INLINE_LIMIT:
                    claim["ran"] = data
                    break
                report = report[len(report) // 4 + 1:]
        d = self.registrar.callRemote(
            "register_engine", self.remote_self, self.uuid,
            dumps_plain(self.interpreter.properties, "the engine's properties"), token, **claim,
        )

        def registered(answer: tuple) -> int:
            self.id, self.session = answer
            self._unreported = []
            self.secret = None  # used up: the member key admits this engine from now on
            return self.id

        return d.addTimeout(self._join_timeout, reactor).addCallback(registered)

    def _controller_lost(self, join: int | None = None, *args: Any) -> None:
        if self.stopping or (join is not None and join != self._joins):
            return
        if self.reconnect:
            log.info("the controller went away; engine {id} tries to join it again for "
                     "{s} s", id=self.id, s=self.reconnect)
            self.lost = True
            self._lost_at = time.monotonic()
            self.executor.stop()
            if self.channel is not None:
                self.channel.close()
            return
        log.info("the controller went away; engine {id} exits", id=self.id)
        self.shutdown(0)

    def shutdown(self, code: int = 0) -> None:
        """Stop serving (from any thread); :meth:`run` then returns ``code``."""
        if self.stopping:
            return
        self.stopping = True
        self.exit_code = code
        self.executor.stop()
        if self.channel is not None:
            self.channel.close()

    # -- IEngineServer ------------------------------------------------------
    def call(self, method: str, args: tuple) -> Reply | bool | None:
        """Run a command in this (the main) thread; see :class:`IEngineServer`."""
        if method == "kill":
            self.kill()
            return None
        if method == "ping":
            return True
        if method == "skip_tasks":
            self.skip_tasks(*args)
            return None
        if method == "send_signal":
            self.send_signal(*args)
            return None
        return self.commands.run(method, args)

    def submit(self, method: str, args: tuple) -> defer.Deferred:
        """(reactor thread) Have the main thread run :meth:`call`."""
        return self.executor.submit(self.call, method, args)

    def skip_tasks(self, taskids: list[int]) -> None:
        """(Any thread) tasks of the batches held not to start: aborted."""
        taskrun.skip(taskids)

    def send_signal(self, signum: int) -> None:
        """(Any thread) Deliver ``signum`` to this process's main thread, where user
        code runs (SIGINT: see :data:`plait.kernel.engine.interpreter.interrupts`)."""
        try:
            sig = signal.Signals(signum)
        except ValueError:
            log.warn("ignored a request for signal {n}: not a signal", n=signum)
            return
        if sig == signal.SIGINT:
            signal.pthread_kill(threading.main_thread().ident or 0, sig)
        else:
            os.kill(os.getpid(), sig)

    def kill(self) -> None:
        """Exit soon (any thread): the answer to ``kill`` leaves first."""
        reactor.callFromThread(reactor.callLater, 0.01, hard_exit, 0)

    # -- what commands need -------------------------------------------------
    def _open_upload(self, size: int, readers: int) -> tuple[bytes, bytes, Any]:
        """(main thread) Reserve a blob on the controller's data port."""
        return _wait_for(self.session.callRemote, "open_upload", size, readers)

    def _properties_changed(self, props: dict) -> None:
        """(main thread) User code changed the properties: tell the controller."""
        reactor.callFromThread(self.sync_properties, props)

    def _watch_memory(self) -> None:
        """(Its own thread) Past :attr:`memory_limit`, say why to the controller (the
        task running fails with an EngineError saying so), then exit: an engine
        over its limit would take the machine down with it."""
        assert self.memory_limit is not None
        while not self.stopping:
            rss = resident_bytes()
            if rss is None:
                return  # (no /proc: no limit)
            if rss > self.memory_limit:
                reason = (f"engine {self.id} used {rss / 2**20:.0f} MB, over its memory limit "
                          f"of {self.memory_limit / 2**20:.0f} MB")
                log.error("{reason}: it exits", reason=reason)
                try:
                    blockingCallFromThread(reactor, self._say_last_words, reason)
                except Exception:
                    pass  # it goes all the same; the controller says it was lost
                hard_exit(3)
            time.sleep(MEMORY_CHECK_EVERY)

    def _report_usage(self) -> None:
        """(reactor, every :data:`USAGE_EVERY` s) Tell the controller this engine's
        pid, host, resident memory and CPU seconds (the status page shows them);
        one-way: nothing waits for it."""
        if self.session is None or self.lost:
            return
        times = os.times()
        try:
            self.session.callRemoteOnly("usage", os.getpid(), _HOST, resident_bytes() or 0,
                                        times.user + times.system)
        except Exception:
            pass  # (a connection going away: the next report, or none)

    def _say_last_words(self, reason: str) -> defer.Deferred:
        """(reactor) Tell the controller why this engine goes (2 s at most)."""
        return self.session.callRemote("last_words", reason).addTimeout(2, reactor)

    def sync_properties(self, props: dict) -> None:
        """Send properties changed by user code to the controller."""
        if self.session is not None:
            self.session.callRemote("set_properties", dumps_plain(props)).addErrback(
                lambda f: log.failure("could not sync properties", f)
            )

    # -- main thread --------------------------------------------------------
    def _connect(self) -> bool:
        """Join the controller; True once registered.  Sets :attr:`error`."""
        where = self.furl.split("@")[-1].split("/")[0]
        try:
            ticket = _wait_for(self._join)
            token = b""
            if ticket is not None:
                tub_id, host = channel_address(self.furl)
                try:
                    self.channel = BlockingChannel.open(*route(host, ticket[1]), ticket[0],
                                                        tub_id)
                    token = ticket[0]
                except (ChannelClosed, PlaitConnectionError) as exc:  # (or its tunnel)
                    log.warn("no command channel ({e}); commands will travel on foolscap", e=exc)
            self.id = _wait_for(self._register, token)
        except Exception as exc:
            kind, said = _what_failed(exc)
            if kind == EnrollmentRefused.__name__:
                self.refused = True  # (asking again changes nothing)
                self.error = f"the controller at {where} refused this engine: {said}"
            else:
                self.error = f"could not register with the controller at {where}: {said}"
            log.error("{msg}", msg=self.error)
            return False
        self.interpreter.engine_id = self.id
        log.info("registered as engine {id}", id=self.id)
        if not self._watching:  # (the first registration)
            self._watching = True
            if self.memory_limit:
                threading.Thread(target=self._watch_memory, name="plait-memory-watch",
                                 daemon=True).start()
            reactor.callFromThread(self._usage_loop.start, USAGE_EVERY, True)
        if self.on_registered is not None:
            self.on_registered(self.id)
        return True

    def run(self) -> int:
        """Start the reactor thread, register, and serve until stopped.

        Commands arrive on the channel, served right here; without one they
        come through foolscap and :class:`MainThreadExecutor`.
        """
        thread = threading.Thread(
            target=reactor.run, kwargs={"installSignalHandlers": False},
            name="plait-reactor", daemon=True,
        )
        thread.start()
        try:
            if not self._connect() and not self._replacement_joins():
                return 2
            while True:
                if self.channel is not None:
                    self.channel.serve(self.remote_self, self.call)
                else:
                    self.executor.run_forever()
                # with reconnect, any end of serving but a stop is a lost controller
                if self.stopping or not (self.lost or self.reconnect) or not self._rejoin():
                    break
            self.shutdown(self.exit_code)
        except KeyboardInterrupt:
            self.exit_code = 130
        return self.exit_code

    def _replacement_joins(self) -> bool:
        """(main thread) An engine started in place of one that died (it claims
        that one's id) and that could not join: it keeps trying as a lost
        engine does (:meth:`_rejoin`), for the controller may be the one away
        (killed at once with it, and being restarted).  Its fork server
        restarts an engine that dies before registering only a few times in a
        row: without this, a controller restart slower than those restarts
        left that engine's slot empty for good."""
        if self.claim_id is None or not self.reconnect or self.refused or self.stopping:
            return False
        log.info("engine {id} keeps trying to join for {s} s", id=self.claim_id,
                 s=self.reconnect)
        return self._rejoin()

    def _rejoin(self) -> bool:
        """(main thread) Join the controller again, with this namespace, within
        :attr:`reconnect` seconds; whether it did.  It claims its id again, and
        keeps it unless another engine took it meanwhile.  It tries at least
        every :data:`REJOIN_EVERY` seconds, so that it is back within about as
        long once a restarted controller listens."""
        import time

        deadline = time.monotonic() + self.reconnect
        pause = 0.5
        while not self.stopping and not self.refused and time.monotonic() < deadline:
            self.lost = False
            self.channel = None
            self.session = None
            self.executor = MainThreadExecutor()
            self.error = None
            # no step of this attempt may outlast the reconnect deadline
            self._join_timeout = max(1.0, min(REGISTRATION_TIMEOUT,
                                              deadline - time.monotonic()))
            if self._connect():
                return True
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, REJOIN_EVERY)
        log.info("engine {id} could not join its controller; it exits",
                 id=self.id if self.id is not None else self.claim_id)
        return False


#: Seconds between two reports of an engine's memory and CPU to the controller.
USAGE_EVERY = 2.0
_HOST = socket.gethostname()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident memory, in bytes (None without /proc)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _what_failed(exc: BaseException) -> tuple[str, str]:
    """(the exception's class name, its message), for a failure the controller
    sent back too (foolscap wraps those, with their remote traceback)."""
    failure = getattr(exc, "failure", None)
    if failure is not None and isinstance(getattr(failure, "value", None), str):
        kind = getattr(failure.type, "__name__", str(failure.type))
        return kind.rsplit(".", 1)[-1], failure.value
    return type(exc).__name__, str(exc)


class OutputStreamer:
    """Sends the output of running later-generation tasks to the controller.

    :meth:`write` (the main thread, as user code prints) buffers; the reactor
    thread sends what accumulated every :data:`OUTPUT_EVERY` seconds at most,
    in one ``task_output`` call of the engine's session.  What a task prints
    also comes back, whole, with its result: the stream is a preview, and
    output past :data:`OUTPUT_BUDGET` characters per send is dropped from it.
    """

    def __init__(self, session: Callable[[], Any]):
        self._session = session
        self._lock = threading.Lock()
        self._chunks: list[tuple[int, str, str]] = []
        self._size = 0
        self._scheduled = False

    def write(self, taskid: int, name: str, text: str) -> None:
        with self._lock:
            if self._size >= OUTPUT_BUDGET:
                return
            text = text[:OUTPUT_BUDGET - self._size]
            self._size += len(text)
            last = self._chunks[-1] if self._chunks else None
            if last is not None and last[0] == taskid and last[1] == name:
                self._chunks[-1] = (taskid, name, last[2] + text)
            else:
                self._chunks.append((taskid, name, text))
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            reactor.callFromThread(reactor.callLater, OUTPUT_EVERY, self._send)

    def _send(self) -> None:
        with self._lock:
            chunks, self._chunks, self._size = self._chunks, [], 0
            self._scheduled = False
        session = self._session()
        if chunks and session is not None:
            session.callRemote("task_output", chunks).addErrback(lambda f: None)


#: Seconds between two sends of streamed output, and characters per send at most.
OUTPUT_EVERY = 0.05
OUTPUT_BUDGET = 1 << 16


def install_interrupts(stop_when_idle: bool) -> None:
    """(Main thread) SIGINT interrupts user code, and is ignored between commands;
    ``stop_when_idle``: then it stops the engine instead (one run by hand in a
    terminal, which Ctrl-C stops as before).  See :data:`interrupts`."""
    interrupts.stop_when_idle = stop_when_idle
    signal.signal(signal.SIGINT, interrupts.handler)


def hard_exit(code: int) -> None:
    """Leave now: flush what can be flushed, skip interpreter teardown."""
    for stream in ("stdout", "stderr"):
        try:
            getattr(sys, stream).flush()
        except Exception:
            pass
    os._exit(code)
