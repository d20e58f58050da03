"""The flows' writes to the Prefect API, which a busy SQLite does not hold up for seconds.

A Prefect server on SQLite (`prefect server start`'s default) answers 503 when a write that
read first meets another writer's commit (SQLITE_BUSY_SNAPSHOT: its busy timeout does not
cover that case). A variable's update and delete read first, and so does taking a slot of a
concurrency limit (the backup lock). While other runs write, Prefect's client answers a 503 by
sleeping 2 s (then 4, 8, …) before it asks again, and the run waits with it. These writes go
through Prefect's own HTTP client (its API
address, auth and attribution headers, transport) but not its retrying `send`: what Prefect
would retry is asked again after 50 ms, doubling up to 1 s, for as long as Prefect's client
would keep asking. Reads never meet it (SQLite's WAL lets them run beside a writer): they
stay Prefect's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import httpx
    from prefect.client.base import PrefectHttpxSyncClient

# What Prefect's client retries (prefect/client/base.py): these answers, and a connection
# that broke once made (a new client's refused connection fails at once, as there).
AGAIN = {408, 429, 502, 503}
FIRST_PAUSE = 0.05
LONGEST_PAUSE = 1.0

log = logging.getLogger(__name__)


def api_write(method: str, path: str, body: object = None) -> httpx.Response:
    """One write to the Prefect API (`path` below its address), asked again quickly while the
    server answers what Prefect's client would retry; the last answer, whatever its status."""
    with _client() as http:
        return _write(http, method, path, body)


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
    reply = api_write("DELETE", f"/variables/name/{name}")
    if reply.status_code != 404:
        reply.raise_for_status()


@contextlib.contextmanager
def _client() -> Iterator[PrefectHttpxSyncClient]:
    """The httpx client inside Prefect's (`get_client`): its `send` is the retrying one."""
    from prefect import get_client

    with get_client(sync_client=True) as prefect:
        yield cast("PrefectHttpxSyncClient", prefect._client)


def _patience() -> float:
    """The pauses Prefect's client would take before giving up: 2 + 4 + … seconds."""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    return float(sum(2**n for n in range(1, PREFECT_CLIENT_MAX_RETRIES.value() + 1)))


def _write(
    http: PrefectHttpxSyncClient, method: str, path: str, body: object = None
) -> httpx.Response:
    """One write, asked again while the server answers what Prefect would retry; the last
    answer (or the last broken connection's error)."""
    import httpx

    deadline = time.monotonic() + _patience()
    pause = FIRST_PAUSE
    while True:
        request = http.build_request(method, path, json=body)
        http._add_attribution_headers(request)  # what Prefect's send adds first
        if http.enable_csrf_support:
            http._add_csrf_headers(request)
        late = time.monotonic() + pause > deadline
        try:
            reply = httpx.Client.send(http, request)  # httpx's own send: no 2 s pause
        except httpx.TransportError as exc:
            if late or isinstance(exc, httpx.ConnectError):
                raise
            why = f"broke the connection ({type(exc).__name__})"
        else:
            if late or reply.status_code not in AGAIN:
                return reply
            why = f"answered {reply.status_code}"
        log.debug("%s %s: the Prefect API %s; asking again in %.2fs", method, path, why, pause)
        time.sleep(pause)
        pause = min(pause * 2, LONGEST_PAUSE)
