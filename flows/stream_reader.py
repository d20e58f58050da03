"""The change stream's reading side (flows.stream): the Changes RPC read by a thread into a
bounded inbox, from one revision on, going to the next of the cluster's servers when one goes
away. Closed to pause (a store that fails: the stream holds no more than it can store) and
opened again from where the segment builder stopped; what a closed reading still held is
dropped and read again."""

from __future__ import annotations

import logging
import queue
import threading

from jaco.public import Compacted, JacoError, Progress, RevisionRecord, follow_changes, open_client

log = logging.getLogger("jaco.stream")
INBOX_ITEMS = 1000  # revisions read ahead of the segment builder, at most
Item = RevisionRecord | Progress | BaseException


class Reading:
    def __init__(self, servers: list[str], token: str, start: int) -> None:
        self.servers, self.token = servers, token
        self.inbox: queue.Queue[Item] = queue.Queue(INBOX_ITEMS)
        self.stop = threading.Event()
        threading.Thread(target=self._read, args=(start,), daemon=True).start()

    def get(self, timeout: float) -> Item | None:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.stop.set()

    def _put(self, item: Item) -> bool:
        """Into the bounded inbox, waiting while it is full; False once closed."""
        while not self.stop.is_set():
            try:
                self.inbox.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, start: int) -> None:
        position, attempt = start - 1, 0
        while not self.stop.is_set():
            server = self.servers[attempt % len(self.servers)]
            try:
                with open_client(server, self.token) as client:
                    for item in follow_changes(client, position + 1):
                        position = max(position, item.revision)
                        if not self._put(item):
                            return
            except Compacted as exc:
                self._put(exc)
                return
            except JacoError as exc:
                if not exc.retryable:
                    self._put(exc)
                    return
                log.warning("server %s: %s; trying the next one", server, exc.message)
            attempt += 1
            self.stop.wait(min(0.5 * attempt, 5.0))
