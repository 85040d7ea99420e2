"""What an engine does with one command from the controller.

:class:`Commands` runs an :class:`~plait.interfaces.engine.RIEngine` command
in the engine's main thread and answers with the reply ``(ok, payload)`` of
:mod:`plait.interfaces.engine`:

* payload arguments are decoded here (large ones are fetched from the
  controller's data port, :mod:`plait.wire.bulk`);
* the :class:`~plait.kernel.engine.interpreter.Interpreter` runs the command;
* a large value is uploaded to the data port while the reply, which carries
  only its descriptor, is already on its way: the client fetches while the
  engine sends.  The value's buffers are sent without copying, so the next
  command waits for the upload before user code may touch them again;
* properties that user code changed are handed to ``properties_changed``.

Which transport brought the command (the engine's channel, or foolscap) is
not this module's business: see :mod:`plait.kernel.engine.process`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from plait.kernel.engine.interpreter import Interpreter
from plait.wire import bulk
from plait.wire.serialize import deserialize, is_bulk

log = Logger()

Reply = tuple[bool, bytes]


def _same(*args: Any) -> tuple:
    return args


#: RIEngine method -> (Interpreter method, decode payload arguments?, argument conversion)
COMMANDS: dict[str, tuple[str, bool, Callable[..., tuple]]] = {
    "execute": ("execute", False, lambda lines, filename="": (lines, filename or None)),
    "push": ("push", True, _same),
    "pull": ("pull", False, _same),
    "apply": ("apply_call", True, _same),
    "get_result": ("get_result", False, _same),
    "keys": ("keys", False, _same),
    "reset": ("reset", False, _same),
    "run_task": ("run_task", True, _same),
}


class Commands:
    """Runs engine commands on ``interpreter`` (in the thread that runs user code).

    ``open_upload(size, readers)`` reserves a blob on the controller's data
    port and returns ``(token, blob_id, address)`` (it blocks: it is called
    from this thread); ``properties_changed(props)`` is called with the
    engine's properties after a command that changed them.
    """

    def __init__(self, interpreter: Interpreter,
                 open_upload: Callable[[int, int], tuple[bytes, bytes, Any]],
                 properties_changed: Callable[[dict], None]):
        self.interpreter = interpreter
        self._open_upload = open_upload
        self._properties_changed = properties_changed
        self._uploads: list[threading.Thread] = []

    def run(self, method: str, args: tuple) -> Reply:
        """Run the RIEngine command ``method`` with its wire ``args``; never raises.

        KeyError for a method that is not a command (the transport checked
        the method against RIEngine before).
        """
        name, decode, convert = COMMANDS[method]
        interp = self.interpreter
        self._drain_uploads()
        args = convert(*args)
        try:
            if decode:
                args = tuple(self._decode(a) for a in args)
        except BaseException as exc:
            reply = False, interp.failure_payload(exc, name)
        else:
            reply = interp.handle(name, *args, encode=self._encode)
        changed = interp.take_changed_properties()
        if changed is not None:
            self._properties_changed(changed)
        return reply

    def _decode(self, payload: bytes) -> Any:
        return bulk.fetch(payload) if is_bulk(payload) else deserialize(payload)

    def _encode(self, value: Any) -> bytes:
        """The reply payload for ``value``; a large one is uploaded meanwhile."""
        out = bulk.outgoing(value)
        if isinstance(out, bytes):
            return out
        token, blob_id, address = self._open_upload(out.size, 1)
        address = tuple(address)
        thread = threading.Thread(
            target=self._upload, args=(out, address, token), name="plait-upload", daemon=True
        )
        thread.start()
        self._uploads.append(thread)
        return out.descriptor(address, blob_id)

    @staticmethod
    def _upload(out: bulk.Outgoing, address: tuple, token: bytes) -> None:
        try:
            out.send(address, token)
        except Exception as exc:  # the receiver's fetch fails and says so
            log.warn("an upload to the controller failed: {e}", e=exc)

    def _drain_uploads(self) -> None:
        while self._uploads:
            self._uploads.pop().join()
