"""Channels: the lean transport is as safe as the FURL that opened it."""

from __future__ import annotations

import pickle
import socket
import ssl
import struct
from pathlib import Path

import pytest

from plait.wire.channel import (
    HELLO,
    REQUEST,
    channel_address,
    open_channel,
    safe_dumps,
    safe_loads,
)
from plait.wire.errors import ChannelClosed, ChannelError
from support import in_reactor


def _ticket(mec):
    return in_reactor(mec.asynchronous._reference.callRemote, "open_channel")


def _furl(c, name="mec"):
    return Path(c.furl_file(name)).read_text().strip()


def test_clients_use_a_channel_on_the_mec_interface(cluster4):
    mec = cluster4.mec()
    assert type(mec.asynchronous._remote).__name__ == "_ClientProtocol"
    assert mec.get_ids() == [0, 1, 2, 3]


def test_a_ticket_opens_one_channel_once(cluster4):
    mec = cluster4.mec()
    token, port = _ticket(mec)
    tub_id, host = channel_address(_furl(cluster4))
    channel = in_reactor(open_channel, host, port, token, tub_id)
    assert in_reactor(channel.callRemote, "get_ids") == (True, [0, 1, 2, 3])
    with pytest.raises(ChannelClosed):  # the same ticket again
        in_reactor(open_channel, host, port, token, tub_id)
    with pytest.raises(ChannelClosed):  # a made-up ticket
        in_reactor(open_channel, host, port, b"x" * 32, tub_id)


def test_channel_refuses_a_server_that_is_not_the_furls(cluster4):
    mec = cluster4.mec()
    token, port = _ticket(mec)
    _, host = channel_address(_furl(cluster4))
    engine_tub_id, _ = channel_address(_furl(cluster4, "engine"))  # another certificate
    with pytest.raises(ChannelClosed):
        in_reactor(open_channel, host, port, token, engine_tub_id)


def test_channel_checks_the_remote_interface(cluster4):
    mec = cluster4.mec()
    channel = mec.asynchronous._remote
    with pytest.raises(ChannelError, match="Violation"):
        in_reactor(channel.callRemote, "execute", 42, (True, []), True)
    with pytest.raises(ChannelError, match="no method 'register_engine'"):
        in_reactor(channel.callRemote, "register_engine", None, "u", b"P", b"")
    assert mec.get_ids() == [0, 1, 2, 3]  # the channel survives both


def test_safe_loads_refuses_classes(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    with pytest.raises(pickle.UnpicklingError, match="may not load"):
        safe_loads(pickle.dumps(Evil()))
    assert not marker.exists()
    assert safe_loads(safe_dumps((1, b"x", "y", [None, 2.5], {3: (True,)}))) == (
        1, b"x", "y", [None, 2.5], {3: (True,)})


def _raw_tls(host: str, port: int) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(socket.create_connection((host, port), timeout=5))


def _frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


@pytest.mark.parametrize("frame", [
    _frame(b"\x80\x05garbage"),
    _frame(pickle.dumps((REQUEST, 0, "get_ids", ()))),  # a call before any ticket
    _frame(pickle.dumps((HELLO, b"t" * 32))),  # a wrong ticket
    struct.pack("!I", 1 << 30),  # announces a huge frame before authenticating
    _frame(pickle.dumps(ValueError("a class"))),
])
def test_strangers_on_the_channel_port_are_dropped(cluster4, frame):
    mec = cluster4.mec()
    _, port = _ticket(mec)
    _, host = channel_address(_furl(cluster4))
    with _raw_tls(host, port) as s:
        s.sendall(frame)
        s.settimeout(5)
        try:
            assert s.recv(100) == b""  # closed without an answer
        except (ssl.SSLError, ConnectionResetError):
            pass
    assert mec.get_ids() == [0, 1, 2, 3]


def test_strangers_holding_connections_open_do_not_lock_clients_out(cluster4):
    """Many idle connections on the channel and data ports: new clients still work."""
    from plait.kernel.controller.blobserver import MAX_UNPROVEN as DATA_UNPROVEN
    from plait.wire.channel import MAX_UNPROVEN

    mec = cluster4.mec()
    _, port = _ticket(mec)
    host = channel_address(_furl(cluster4))[1]
    data = tuple(in_reactor(mec.asynchronous._remote_call, "open_upload", 10, 1)[2])
    idle = [socket.create_connection((host, port)) for _ in range(MAX_UNPROVEN * 3)]
    idle += [socket.create_connection(data) for _ in range(DATA_UNPROVEN * 3)]
    try:
        import numpy as np

        fresh = cluster4.mec()  # opens a new channel
        assert type(fresh.asynchronous._remote).__name__ == "_ClientProtocol"
        big = np.arange(200_000.0)  # over the inline limit: uses the data port
        fresh.push({"big": big}, targets=0)
        assert np.array_equal(fresh.pull("big", targets=0)[0], big)
    finally:
        for s in idle:
            s.close()
