"""Free 127.0.0.1 ports for the local launchers: one registry, so that no port is handed out
twice in one process (a port is free when asked for, and stays reserved here until the
service binds it)."""

from __future__ import annotations

import socket

_used_ports: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now and not handed out before in this process."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _used_ports:
            _used_ports.add(port)
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
        _used_ports.update((port, port + offset))
        return port, port + offset
