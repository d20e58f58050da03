"""IP address management: one address per replica from the cluster subnet."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from jaco.errors import Conflict, InvalidArgument


def check_subnet(subnet: str) -> str:
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"invalid subnet {subnet!r}: {exc}") from None
    if net.num_addresses < 8:
        raise InvalidArgument(f"subnet {subnet} is too small for replicas")
    return str(net)


def allocate(subnet: str, taken: Iterable[str], count: int) -> list[str]:
    """The `count` lowest free host addresses (the first host address is the gateway)."""
    used = set(taken)
    hosts = ipaddress.ip_network(subnet).hosts()
    next(hosts)  # gateway
    picked: list[str] = []
    for host in hosts:
        if len(picked) == count:
            break
        ip = str(host)
        if ip not in used:
            picked.append(ip)
    if len(picked) < count:
        raise Conflict(f"the cluster subnet {subnet} has no free address left")
    return picked
