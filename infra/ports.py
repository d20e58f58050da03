"""Free 127.0.0.1 ports for the local launchers: one registry, so that no port is handed out
twice (a port is free when asked for, and is never handed out again by this registry).

The registry is this process's set, and, when `JACO_PORT_REGISTRY` names a directory, that
directory too: one empty file per port handed out, created exclusively, so that processes
started side by side (the suite's parallel workers, `make test`) never share a port either.
The ports come from below the kernel's ephemeral range (`ip_local_port_range`), which the
kernel never hands out by itself: a port handed out here but not yet bound (or whose node is
restarting) cannot become another process's `bind(0)` or the local end of a connection."""

from __future__ import annotations

import functools
import os
import random
import socket
from pathlib import Path

REGISTRY_ENV = "JACO_PORT_REGISTRY"
LOWEST = 10000
_used_ports: set[int] = set()
_random = random.Random(os.urandom(16))  # not the global one, which the tests seed alike


def claim(port: int) -> bool:
    """Reserve `port` for this process: False if it was handed out before, here or (with a
    shared registry) in any process using the same one."""
    if port in _used_ports:
        return False
    shared = os.environ.get(REGISTRY_ENV)
    if shared:
        try:
            os.close(os.open(os.path.join(shared, str(port)), os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
    _used_ports.add(port)
    return True


@functools.cache
def _ephemeral() -> tuple[int, int]:
    """The kernel's ephemeral range, read once."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def candidates(offset: int = 0) -> range:
    """Ports p, with p + offset, that the kernel does not hand out by itself: below its
    ephemeral range (or, were that too low, above it)."""
    low, high = _ephemeral()
    if low - offset - LOWEST >= 1000:
        return range(LOWEST, low - offset)
    return range(high + 1, 65536 - offset)


def bindable(port: int, reuse: bool = False) -> bool:
    """Can a loopback server bind `port` now? With `reuse` (SO_REUSEADDR, as servers set it),
    a connection of the past lingering in TIME_WAIT does not count, only a listener."""
    with socket.socket() as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port that is free now and not handed out before."""
    pool = candidates()
    while True:
        port = _random.choice(pool)
        if bindable(port) and claim(port):
            return port


def free_port_pair(offset: int) -> tuple[int, int]:
    """Free loopback ports `p` and `p + offset`, for services that derive one from the other."""
    pool = candidates(offset)
    while True:
        port = _random.choice(pool)
        if bindable(port) and bindable(port + offset) and claim(port):
            if claim(port + offset):
                return port, port + offset
            # the first stays claimed (handed out to no one): simpler than a release
