"""The routing of plait.wire.tunnel: pure logic, with a stand-in for the SSH
connection (the real tunnels are tested in cluster/test_remote_controller.py)."""

from __future__ import annotations

import pytest

from plait.wire import tunnel as tunnels
from plait.wire.errors import PlaitConnectionError

FURL = "pb://" + "t" * 32 + "@tcp:10.1.2.3:4567/" + "s" * 32


class StandIn(tunnels.SSHTunnel):
    """A tunnel whose forwards are numbered, not made by ssh."""

    def __init__(self) -> None:
        super().__init__("user@login")
        self.asked: list[tuple[str, int]] = []

    def forward(self, host: str, port: int) -> int:
        if (host, port) not in self.asked:
            self.asked.append((host, port))
        return 20000 + self.asked.index((host, port))

    @property
    def local_ports(self) -> list[int]:
        return [20000 + i for i in range(len(self.asked))]


@pytest.fixture
def standin():
    made = StandIn()
    yield made
    made.close()
    assert tunnels._via == {}


@pytest.mark.parametrize("furl, address", [
    (FURL, ("10.1.2.3", 4567)),
    ("pb://" + "t" * 32 + "@head.lab:80,tcp:other:81/x", ("head.lab", 80)),
    ("pb://" + "t" * 32 + "@tcp:[::1]:99/x", ("::1", 99)),
])
def test_the_address_of_a_furl_is_its_first_hint(furl, address):
    assert tunnels.furl_address(furl) == address


def test_a_furl_without_an_address_is_refused():
    with pytest.raises(PlaitConnectionError, match="names no TCP address"):
        tunnels.furl_address("pb://" + "t" * 32 + "/x")


def test_without_tunnels_everything_is_dialled_as_it_is():
    assert tunnels.route("10.1.2.3", 5) == ("10.1.2.3", 5)
    assert tunnels.route_furl(FURL) == FURL


def test_every_port_of_a_tunnelled_host_goes_through_the_tunnel(standin):
    tunnels.use_tunnel(FURL, standin)
    routed = tunnels.route_furl(FURL)
    # the tub id and the secret stay: TLS still checks the far end
    assert routed == "pb://" + "t" * 32 + "@tcp:127.0.0.1:20000/" + "s" * 32
    assert tunnels.route("10.1.2.3", 7000) == ("127.0.0.1", 20001)  # a channel port
    assert tunnels.route("10.1.2.3", 7000) == ("127.0.0.1", 20001)  # made once
    assert tunnels.route("10.9.9.9", 7000) == ("10.9.9.9", 7000)  # other hosts: directly
    assert standin.asked == [("10.1.2.3", 4567), ("10.1.2.3", 7000)]


def test_a_tunnelled_loopback_leaves_the_tunnels_own_ends_alone(standin):
    furl = FURL.replace("10.1.2.3", "127.0.0.1")
    tunnels.use_tunnel(furl, standin)
    assert tunnels.route("127.0.0.1", 4567) == ("127.0.0.1", 20000)
    assert tunnels.route("127.0.0.1", 20000) == ("127.0.0.1", 20000)  # no tunnel in a tunnel


@pytest.mark.parametrize("server", ["", "-oProxyCommand=x", "a b"])
def test_a_server_name_ssh_would_misread_is_refused(server):
    with pytest.raises(PlaitConnectionError, match="is not an SSH server name"):
        tunnels.SSHTunnel(server)


def test_a_missing_ssh_is_a_clear_error():
    with pytest.raises(PlaitConnectionError, match="'no-such-ssh' is not installed"):
        tunnels.SSHTunnel("user@login", command="no-such-ssh").open()


def test_a_route_lasts_until_its_last_user_releases_it(standin):
    tunnels.use_tunnel(FURL, standin)
    tunnels.use_tunnel(FURL, standin)  # a second client of the same controller
    tunnels.release(FURL)
    assert tunnels.routed("10.1.2.3")
    tunnels.release(FURL)
    assert not tunnels.routed("10.1.2.3")
    assert tunnels.route("10.1.2.3", 4567) == ("10.1.2.3", 4567)  # dialled directly again


@pytest.mark.parametrize("given, server, port", [
    ("me@login:2222", "me@login", "2222"), ("me@login", "me@login", None),
    ("[::1]:22", "[::1]:22", None), ("::1", "::1", None),
])
def test_a_port_given_with_the_server_becomes_an_ssh_option(given, server, port):
    assert tunnels._split_port(given) == (server, port)
