"""Writes of Prefect variables that a busy SQLite does not hold up for seconds.

A Prefect server on SQLite (`prefect server start`'s default) answers 503 when a write that
read first meets another writer's commit (SQLITE_BUSY_SNAPSHOT: its busy timeout does not
cover that case), and a variable's update and delete both read first. At the end of a run the
server is busy recording that run's task states, and Prefect's client answers a 503 by
sleeping 2 s (then 4, 8, 16, 32) before it asks again: the backup flow's lock release kept
runs waiting 2 s after their work was done (docs/benchmarks.md, stop 39). These writes ask
again after 50 ms, doubling up to 1 s, for as long as Prefect's client would keep asking.
Reads never meet it (SQLite's WAL lets them run beside a writer): they stay Prefect's.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import httpx
    from prefect.client.base import PrefectHttpxSyncClient

BUSY = 503
FIRST_PAUSE = 0.05
LONGEST_PAUSE = 1.0
PATIENCE = 62.0  # Prefect's client: 2 + 4 + 8 + 16 + 32 s of pauses

log = logging.getLogger(__name__)


def set_variable(name: str, value: str | int) -> None:
    """Prefect's `Variable.set(name, value, overwrite=True)`, its writes asked again quickly."""
    with _client() as http:
        reply = _write(http, "PATCH", f"/variables/name/{name}", {"value": value})
        if reply.status_code == 404:  # not there yet
            reply = _write(http, "POST", "/variables/", {"name": name, "value": value})
            if reply.status_code == 409:  # another writer created it meanwhile
                reply = _write(http, "PATCH", f"/variables/name/{name}", {"value": value})
        reply.raise_for_status()


def unset_variable(name: str) -> None:
    """Prefect's `Variable.unset(name)`, asked again quickly; a variable not there is gone."""
    with _client() as http:
        reply = _write(http, "DELETE", f"/variables/name/{name}")
        if reply.status_code != 404:
            reply.raise_for_status()


class _client:
    """Prefect's own HTTP client (its API address, auth headers and transport), from
    `get_client`; its `send` is Prefect's retrying one, which `_write` steps around."""

    def __enter__(self) -> PrefectHttpxSyncClient:
        from prefect import get_client

        self._prefect = get_client(sync_client=True)
        return cast("PrefectHttpxSyncClient", self._prefect.__enter__()._client)

    def __exit__(self, *exc: object) -> None:
        self._prefect.__exit__(*exc)


def _write(
    http: PrefectHttpxSyncClient, method: str, path: str, body: object = None
) -> httpx.Response:
    """One write, asked again while the server answers 503; the last answer."""
    import httpx

    deadline = time.monotonic() + PATIENCE
    pause = FIRST_PAUSE
    while True:
        request = http.build_request(method, path, json=body)
        if http.enable_csrf_support:  # what Prefect's send adds before it sends
            http._add_csrf_headers(request)
        reply = httpx.Client.send(http, request)  # httpx's own send: no 2 s pause on a 503
        if reply.status_code != BUSY or time.monotonic() + pause > deadline:
            return reply
        log.debug("%s %s: the Prefect API was busy (503); asking again in %.2fs", method, path,
                  pause)  # fmt: skip
        time.sleep(pause)
        pause = min(pause * 2, LONGEST_PAUSE)
