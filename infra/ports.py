"""Free 127.0.0.1 ports for the local launchers: one registry, so that no port is handed out
twice (a port is free when asked for, and stays reserved here until the service binds it).

The registry is this process's set, and, when `JACO_PORT_REGISTRY` names a directory, that
directory too: one empty file per port handed out, created exclusively, so that processes
started side by side (the suite's parallel workers, `make test`) never share a port either.
The kernel's `bind(0)` alone does not promise that: a port handed out but not yet bound (or
whose node is restarting) is free to the next process that asks."""

from __future__ import annotations

import os
import socket

REGISTRY_ENV = "JACO_PORT_REGISTRY"
_used_ports: set[int] = set()


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


def free_port() -> int:
    """A loopback port that is free now and not handed out before."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if claim(port):
            return port


def free_port_pair(offset: int) -> tuple[int, int]:
    """Free loopback ports `p` and `p + offset`, for services that derive one from the other."""
    while True:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port: int = a.getsockname()[1]
            if port + offset > 65535 or {port, port + offset} & _used_ports:
                continue
            try:
                b.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        if claim(port):
            if claim(port + offset):
                return port, port + offset
            # the first stays claimed (handed out to no one): simpler than a release
