"""The address a new, joined or restored node advertises when --advertise-host is not given:
what the host's name resolves to, with a warning where that is loopback (Debian's /etc/hosts
maps the host's name to 127.0.1.1), since no other node could then reach or join it."""

from __future__ import annotations

import socket

import pytest

from jaco.errors import InvalidArgument
from jaco.node.bootstrap import advertised


@pytest.mark.parametrize(
    ("resolved", "warned"), [("127.0.1.1", True), ("::1", True), ("10.1.2.3", False)]
)
def test_a_loopback_name_is_used_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, resolved: str, warned: bool
) -> None:
    monkeypatch.setattr(socket, "gethostbyname", lambda name: resolved)
    warnings: list[str] = []
    assert advertised(None, warnings.append) == resolved
    expected = (
        f"warning: this host's name resolves to {resolved}, a loopback address: no other node "
        "can reach or join this one (give --advertise-host an address they can reach)"
    )
    assert warnings == ([expected] if warned else [])


def test_a_given_address_is_taken_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback given on purpose (one node alone, the tests' local clusters): no warning, and
    the host's name is not even looked up."""

    def unused(name: str) -> str:
        raise AssertionError("looked up")

    monkeypatch.setattr(socket, "gethostbyname", unused)
    warnings: list[str] = []
    assert advertised("127.0.0.1", warnings.append) == "127.0.0.1"
    assert warnings == []


@pytest.mark.parametrize("peer", ["10.0.0.1:7000", "node-1.example:7000"])
def test_a_join_advertised_on_loopback_to_another_host_is_refused(
    monkeypatch: pytest.MonkeyPatch, peer: str
) -> None:
    """Its etcd learner could never be reached, and would block every later join: refused
    before anything is sent. Joining a node on the same host (loopback) works, with the
    warning."""
    monkeypatch.setattr(socket, "gethostbyname", lambda name: "127.0.1.1")
    with pytest.raises(InvalidArgument) as refused:
        advertised(None, pytest.fail, peer)
    assert refused.value.message == (
        f"this host's name resolves to 127.0.1.1, a loopback address, which {peer} could never "
        "reach: give --advertise-host this node's address"
    )
    warnings: list[str] = []
    for local in ("127.0.0.1:7000", "localhost:7000", "[::1]:7000"):
        assert advertised(None, warnings.append, local) == "127.0.1.1"
    assert len(warnings) == 3
    assert advertised("10.0.0.2", pytest.fail, peer) == "10.0.0.2"
