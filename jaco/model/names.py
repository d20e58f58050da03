"""What the cluster accepts as names of nodes, deployments and routes, as hosts, as times, as
a number of replicas."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import re
import socket

from jaco.errors import InvalidArgument

MAX_REPLICAS = 100
PAGE_DEPLOYMENTS = 5000  # deployments in one page of a listing, at most (model.deployments)
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_name(kind: str, name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid {kind} name {name!r}: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def check_replicas(replicas: int) -> int:
    if not 0 <= replicas <= MAX_REPLICAS:
        raise InvalidArgument(f"replicas must be between 0 and {MAX_REPLICAS}, not {replicas}")
    return replicas


_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_host(host: str, what: str = "host") -> str:
    """An IP address, or a DNS name (internationalised names in their ASCII form).

    Returns the form certificates and URLs use; anything else is InvalidArgument.
    """
    text = host.strip("[]")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        ascii_name = text.encode("idna").decode("ascii").lower().rstrip(".")
    except UnicodeError:
        ascii_name = ""
    labels = ascii_name.split(".")
    # All digits at the end is an IP address mistyped (10.0.0.300), never a DNS name: no
    # top-level domain is numeric (RFC 3696, 2); nor is what the resolver reads as an IPv4
    # address in another form (0x7f000001, 10.0.0.0x1: inet_aton's).
    malformed = not all(_LABEL_RE.match(x) for x in labels) or labels[-1].isdigit()
    with contextlib.suppress(OSError):
        socket.inet_aton(ascii_name)
        malformed = True
    if not ascii_name or len(ascii_name) > 253 or malformed:
        raise InvalidArgument(
            f"invalid {what} {host!r}: use an IP address or a DNS name (letters, digits, "
            "'-' and '.')"
        )
    return ascii_name


def parse_time(text: str, what: str) -> dt.datetime | None:
    """An RFC 3339 time (UTC if it names no zone), None for ""; anything else is refused."""
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what} time {text!r}: use RFC 3339") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
