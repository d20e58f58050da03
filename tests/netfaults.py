"""A byte-level TCP proxy on loopback that can cut or slow a connection: real network faults.

TLS passes through untouched (the proxy never sees plaintext); the client sees exactly what it
would see if the server died or the network stalled mid-stream.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class FaultyProxy:
    def __init__(
        self,
        target_port: int,
        cut_after: int | None = None,
        delay_per_chunk: float = 0.0,
        cut_upstream_once_after: int | None = None,
        listen_host: str = "127.0.0.1",
        cut_once_after: int | None = None,
        asked_for: bytes | None = None,
        listen_port: int = 0,
    ) -> None:
        self.target_port = target_port
        self.cut_after = cut_after  # bytes from server to client before the connection drops
        # ... before one connection (the first to get there) drops; the next ones pass. With
        # `asked_for`, only a connection whose client sent those bytes (a key in an HTTP
        # request) counts, from the first reply after them
        self.cut_once_after = cut_once_after
        self.asked_for = asked_for
        # bytes from client to server before one connection (the first to get there) drops
        self.cut_upstream_once_after = cut_upstream_once_after
        # bytes from server to client after which the peer goes silent: nothing is forwarded
        # any more in either direction, and nothing is closed (a host that lost power)
        self.blackhole_after: int | None = None
        self.blackholed = threading.Event()
        self.delay = delay_per_chunk
        self.listener = socket.create_server((listen_host, listen_port))
        self.host = listen_host
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            asked = threading.Event()
            for args in ((client, upstream, False, asked), (upstream, client, True, asked)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, downstream: bool, asked: threading.Event
    ) -> None:
        passed = 0
        try:
            while chunk := src.recv(65536):
                if self.asked_for is not None and not downstream and self.asked_for in chunk:
                    asked.set()
                if downstream and self.asked_for is not None and not asked.is_set():
                    dst.sendall(chunk)  # not the reply counted
                    continue
                if self.blackholed.is_set():
                    continue  # swallow everything, answer nothing
                hole = self.blackhole_after if downstream else None
                if hole is not None and passed + len(chunk) > hole:
                    self.blackholed.set()
                    continue
                if downstream and self.delay:
                    time.sleep(self.delay)
                if downstream:
                    cut = self.cut_after if self.cut_once_after is None else self.cut_once_after
                else:
                    cut = self.cut_upstream_once_after
                if cut is not None and passed + len(chunk) > cut:
                    if not downstream:
                        self.cut_upstream_once_after = None
                    elif self.cut_once_after is not None:
                        self.cut_once_after = None
                    self.cuts += 1
                    dst.sendall(chunk[: cut - passed])
                    break
                dst.sendall(chunk)
                passed += len(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    # shutdown first: close() alone does not wake the other pump's recv(),
                    # which keeps the connection open and the peer never notices the cut
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
